"""The MLPerf DLRM learning-rate schedule, on hand-computed cases."""

from __future__ import annotations

import pytest

from dlrmkit.config import ScheduleConfig
from dlrmkit.errors import ConfigError
from dlrmkit.train.schedule import learning_rate

# warm-up 4 updates, decay from update 10 for 5 updates, base 2.0
SCHED = ScheduleConfig(warmup_steps=4, decay_start_step=10, decay_steps=5)


@pytest.mark.parametrize("update, want", [
    (1, 0.5), (2, 1.0), (3, 1.5),            # warm-up: base * u / W
    (4, 2.0), (7, 2.0), (9, 2.0),            # constant between warm-up and decay
    (10, 2.0),                               # decay starts: ((5 - 0) / 5)^2
    (11, 2.0 * (4 / 5) ** 2),
    (12, 2.0 * (3 / 5) ** 2),
    (14, 2.0 * (1 / 5) ** 2),                # the last decayed update
    (15, 2.0 * (1 / 5) ** 2), (16, 2.0 * (1 / 5) ** 2), (1000, 2.0 * (1 / 5) ** 2),  # held after it
])
def test_warmup_constant_decay_hold(update, want):
    assert learning_rate(update, SCHED, 2.0) == pytest.approx(want, rel=1e-12)


def test_no_schedule_is_constant():
    cfg = ScheduleConfig()
    assert [learning_rate(u, cfg, 0.3) for u in (1, 2, 100, 10**7)] == [0.3] * 4


def test_warmup_only():
    cfg = ScheduleConfig(warmup_steps=10)
    assert learning_rate(1, cfg, 1.0) == pytest.approx(0.1)
    assert learning_rate(5, cfg, 1.0) == pytest.approx(0.5)
    assert learning_rate(10, cfg, 1.0) == 1.0
    assert learning_rate(11, cfg, 1.0) == 1.0


def test_decay_without_warmup_starting_at_zero():
    cfg = ScheduleConfig(decay_start_step=0, decay_steps=4)
    assert learning_rate(1, cfg, 1.0) == pytest.approx((3 / 4) ** 2)
    assert learning_rate(3, cfg, 1.0) == pytest.approx((1 / 4) ** 2)
    assert learning_rate(4, cfg, 1.0) == pytest.approx((1 / 4) ** 2)
    assert learning_rate(50, cfg, 1.0) == pytest.approx((1 / 4) ** 2)


def test_decay_floor():
    cfg = ScheduleConfig(warmup_steps=0, decay_start_step=100, decay_steps=100)
    base = 1e-6
    assert learning_rate(150, cfg, base) == pytest.approx(base * 0.25)  # 2.5e-7: above the floor
    assert learning_rate(190, cfg, base) == pytest.approx(1e-7)  # 1e-8 floored
    assert learning_rate(199, cfg, base) == pytest.approx(1e-7)
    assert learning_rate(500, cfg, base) == pytest.approx(1e-7)


def test_decay_is_monotone_and_continuous_at_start():
    cfg = ScheduleConfig(warmup_steps=3, decay_start_step=3, decay_steps=20)
    lrs = [learning_rate(u, cfg, 1.0) for u in range(1, 40)]
    assert lrs[:2] == pytest.approx([1 / 3, 2 / 3])
    assert lrs[2] == 1.0
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:]))


def test_invalid_schedules_rejected():
    with pytest.raises(ConfigError):
        ScheduleConfig(warmup_steps=-1)
    with pytest.raises(ConfigError):
        ScheduleConfig(warmup_steps=10, decay_start_step=5, decay_steps=3)
