"""Training: optimizers and schedule, the loop, evaluation."""
