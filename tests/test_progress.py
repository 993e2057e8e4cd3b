"""The progress line: number formatting, rate limiting, ETA."""

from __future__ import annotations

import io

from dlrmkit.progress import Progress, duration, human


def test_human_and_duration():
    assert human(999) == "999"
    assert human(1500) == "1.50k"
    assert human(2_500_000) == "2.50M"
    assert human(3e9) == "3.00G"
    assert duration(5) == "5s"
    assert duration(65) == "1m05s"
    assert duration(3725) == "1h02m05s"
    assert duration(-3) == "0s"


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_progress_rate_limited_lines_with_eta():
    clock, stream = Clock(), io.StringIO()
    bar = Progress(1000, "rows", "synth", stream=stream, interval_s=1.0, clock=clock)
    clock.t += 0.5
    bar.update(100)  # within the interval: nothing written
    assert stream.getvalue() == ""
    clock.t += 0.5
    bar.update(100)  # 200 rows in 1 s: 200 rows/s, 800 left: ETA 4s
    lines = stream.getvalue().splitlines()
    assert lines == ["synth: 200/1.00k rows | 200 rows/s | ETA 4s"]
    bar.update(10, force=True)
    assert len(stream.getvalue().splitlines()) == 2
    bar.close()
    assert stream.getvalue().splitlines()[-1].endswith("| 1s")


def test_disabled_progress_writes_nothing():
    stream = io.StringIO()
    bar = Progress(10, "rows", "x", stream=stream, interval_s=0.0, enabled=False)
    bar.update(5, force=True)
    bar.close()
    assert stream.getvalue() == "" and bar.done == 5
