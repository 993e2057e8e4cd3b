"""The MLPerf DLRM learning-rate schedule (the DLRM reference's LRPolicyScheduler)."""

from __future__ import annotations

from dlrmkit.config import ScheduleConfig

MIN_DECAYED_LR = 1e-7  # the reference's floor for the decayed rate


def learning_rate(update: int, cfg: ScheduleConfig, base_lr: float) -> float:
    """Learning rate of the ``update``-th optimizer update (1-based, as the reference counts).

    Warm-up (update < W): base * update / W. Polynomial decay from update S for T updates:
    max(1e-7, base * ((T - (update - S)) / T) ** 2); after it, the last decayed value. Between
    warm-up and decay: base. (The reference holds the last warm-up value, base * (W - 1) / W,
    there instead; base is what its README and MLPerf describe.)
    """
    w, s, t = cfg.warmup_steps, cfg.decay_start_step, cfg.decay_steps
    if update < w:
        return base_lr * update / w
    if t > 0 and update >= s:
        done = min(update - s, t - 1)
        return max(MIN_DECAYED_LR, base_lr * ((t - done) / t) ** 2)
    return base_lr
