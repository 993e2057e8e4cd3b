"""How the DLRM reference cuts rows into days and splits, as pure functions of row counts.

Kaggle: the rows form 7 consecutive "days" of floor(n/7) rows, the remainder going to the first.
Terabyte: one file per day. In both, all days but the last train; of the last day, the FIRST
ceil(m/2) rows are the test split and the rest the validation split (the reference code's
order, which MLPerf's calibration rows in the second half of day_23 confirm).
"""

from __future__ import annotations

KAGGLE_DAYS = 7


def day_sizes(rows: int, days: int) -> list[int]:
    """floor(rows/days) rows a day, the remainder going to the first day."""
    per_day = rows // days
    return [rows - per_day * (days - 1)] + [per_day] * (days - 1)


def split_ranges(day_rows: list[int]) -> dict[str, tuple[int, int]]:
    """Global [start, stop) row ranges of train, val and test for rows laid out day after day."""
    total = sum(day_rows)
    last = day_rows[-1]
    train_end = total - last
    test_end = train_end + (last + 1) // 2
    return {"train": (0, train_end), "val": (test_end, total), "test": (train_end, test_end)}
