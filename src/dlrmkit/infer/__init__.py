"""Inference: a trained DLRM as a plain function from a batch of pairs to click probabilities."""

from dlrmkit.infer.backend import LazyPredictor, TorchPredictor

__all__ = ["LazyPredictor", "TorchPredictor"]
