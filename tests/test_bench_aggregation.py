"""Sample aggregation for the MLPerf DLRM benchmark: MLPerf's published verification trace, a
literal re-implementation of the reference loop, the fixed and uniform rules, trace files and
config validation.

MLPerf's quantile file lives in ../shared/mlperf; the tests that need it skip when it is absent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dlrmkit.bench.aggregation import aggregate_offsets, read_quantile_file, read_trace, write_trace
from dlrmkit.config import MLPERF_QUERY_SIZE_QUANTILE, AggregationConfig
from dlrmkit.errors import ConfigError

SHARED = Path(__file__).resolve().parents[2] / "shared"
QUANTILE_FILE = SHARED / "mlperf" / "dist_quantile.txt"

# MLPerf inference, recommendation/dlrm/pytorch/tools/dist_trace_verification.txt: the sizes of
# the first 100 samples of the Terabyte test split (89137319 pairs), quantile file, seed 123.
TERABYTE_TEST_PAIRS = 89_137_319
MLPERF_FIRST_100_SIZES = [
    200, 200, 200, 200, 500, 700, 200, 100, 100, 500, 300, 200, 100, 300, 100, 300, 700, 300, 200, 100,
    400, 200, 500, 200, 200, 200, 200, 300, 400, 200, 200, 200, 200, 100, 200, 100, 200, 200, 200, 200,
    200, 100, 200, 200, 200, 200, 600, 200, 300, 200, 200, 200, 200, 700, 400, 200, 300, 200, 200, 200,
    100, 200, 200, 600, 500, 200, 600, 500, 100, 700, 200, 200, 400, 500, 200, 200, 200, 200, 200, 200,
    200, 200, 200, 700, 200, 200, 300, 200, 700, 200, 200, 200, 500, 300, 200, 200, 200, 100, 300, 200,
]
MLPERF_LAST_LINE = "26800, 27000, 200"


def _need_quantile_file() -> None:
    if not QUANTILE_FILE.is_file():
        pytest.skip(f"MLPerf's quantile file is not present at {QUANTILE_FILE} (../shared/mlperf is outside the "
                    "repository)")


def _reference_offsets(pairs: int, quantile: tuple[int, ...], seed: int) -> np.ndarray:
    """The MLPerf reference's loop, literally: numpy's global legacy generator, one draw per group."""
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        quantile = np.array(quantile)
        offsets, qo = [], 0
        while True:
            offsets.append(qo)
            qs = quantile[np.random.randint(low=0, high=len(quantile))]
            qo = min(qo + qs, pairs)
            if qo >= pairs:
                break
        offsets.append(pairs)
    finally:
        np.random.set_state(state)
    return np.array(offsets, dtype=np.int64)


def _check_partition(offsets: np.ndarray, pairs: int) -> np.ndarray:
    """Offsets start at 0, end at ``pairs`` and strictly increase; returns the sizes."""
    assert offsets.dtype == np.int64
    assert offsets[0] == 0 and offsets[-1] == pairs
    sizes = np.diff(offsets)
    assert (sizes > 0).all()
    return sizes


# --- the quantile rule against MLPerf ---------------------------------------------------------


def test_quantile_file_reads_mlperf_distribution():
    _need_quantile_file()
    quantile = read_quantile_file(QUANTILE_FILE)
    assert len(quantile) == 20 and quantile[0] == 100 and quantile[-1] == 700
    assert quantile == MLPERF_QUERY_SIZE_QUANTILE  # the built-in default is the same distribution


def test_mlperf_verification_trace(tmp_path):
    _need_quantile_file()
    cfg = AggregationConfig(quantile=read_quantile_file(QUANTILE_FILE), seed=123)
    offsets = aggregate_offsets(TERABYTE_TEST_PAIRS, cfg)
    sizes = _check_partition(offsets, TERABYTE_TEST_PAIRS)
    assert sizes[:100].tolist() == MLPERF_FIRST_100_SIZES
    assert set(sizes[:-1].tolist()) <= set(cfg.quantile)  # only the last group may be clipped

    trace = tmp_path / "dlrm_trace_of_aggregated_samples.txt"
    write_trace(trace, offsets, count=100)
    lines = trace.read_text().splitlines()
    starts = np.concatenate([[0], np.cumsum(MLPERF_FIRST_100_SIZES)[:-1]])
    assert lines == [f"{s}, {s + n}, {n}" for s, n in zip(starts.tolist(), MLPERF_FIRST_100_SIZES)]
    assert lines[-1] == MLPERF_LAST_LINE
    assert trace.read_text().endswith("\n")
    np.testing.assert_array_equal(read_trace(trace), offsets[:101])


@pytest.mark.parametrize("seed", [0, 123, 2024])
@pytest.mark.parametrize("pairs", [1, 99, 100, 101, 5000, 123_457])
def test_quantile_rule_equals_reference_loop(pairs, seed):
    cfg = AggregationConfig(quantile=MLPERF_QUERY_SIZE_QUANTILE, seed=seed)
    want = _reference_offsets(pairs, MLPERF_QUERY_SIZE_QUANTILE, seed)
    got = aggregate_offsets(pairs, cfg)
    np.testing.assert_array_equal(got, want)
    sizes = _check_partition(got, pairs)
    assert set(sizes[:-1].tolist()) <= set(MLPERF_QUERY_SIZE_QUANTILE)
    assert sizes[-1] <= max(MLPERF_QUERY_SIZE_QUANTILE)


def test_quantile_rule_clips_the_last_group():
    # With 101 pairs and sizes of at least 100, the reference draws one full group and clips the
    # second (or covers everything with the first draw when it is >= 101).
    for seed in range(20):
        want = _reference_offsets(101, MLPERF_QUERY_SIZE_QUANTILE, seed)
        got = aggregate_offsets(101, AggregationConfig(quantile=MLPERF_QUERY_SIZE_QUANTILE, seed=seed))
        np.testing.assert_array_equal(got, want)
    # a quantile of one size: 250 pairs in groups of 100 -> 100, 100, 50
    got = aggregate_offsets(250, AggregationConfig(quantile=(100,), seed=5))
    np.testing.assert_array_equal(got, [0, 100, 200, 250])


def test_quantile_rule_custom_distribution_equals_reference_loop():
    quantile = (1, 2, 2, 3, 7)
    for seed in (1, 7):
        for pairs in (1, 2, 50, 997):
            got = aggregate_offsets(pairs, AggregationConfig(quantile=quantile, seed=seed))
            np.testing.assert_array_equal(got, _reference_offsets(pairs, quantile, seed), err_msg=f"{pairs} {seed}")


def test_quantile_rule_leaves_global_numpy_state_alone():
    np.random.seed(99)
    before = np.random.get_state()[1].copy()
    aggregate_offsets(5000, AggregationConfig(quantile=MLPERF_QUERY_SIZE_QUANTILE, seed=1))
    np.testing.assert_array_equal(np.random.get_state()[1], before)


# --- fixed and uniform rules ------------------------------------------------------------------


def test_fixed_rule_size_one_by_default():
    np.testing.assert_array_equal(aggregate_offsets(5, AggregationConfig()), [0, 1, 2, 3, 4, 5])
    np.testing.assert_array_equal(aggregate_offsets(5, AggregationConfig(fix=1)), [0, 1, 2, 3, 4, 5])


@pytest.mark.parametrize("pairs, fix, want", [
    (100, 7, list(range(0, 100, 7)) + [100]),  # 14 groups of 7, then 2
    (98, 7, list(range(0, 99, 7))),  # a multiple: no short group
    (3, 7, [0, 3]),  # one clipped group
    (7, 7, [0, 7]),
    (1, 1, [0, 1]),
])
def test_fixed_rule(pairs, fix, want):
    got = aggregate_offsets(pairs, AggregationConfig(fix=fix))
    np.testing.assert_array_equal(got, want)
    _check_partition(got, pairs)


def test_uniform_rule():
    pairs = 10_007
    cfg = AggregationConfig(min=3, max=9, seed=11)
    offsets = aggregate_offsets(pairs, cfg)
    sizes = _check_partition(offsets, pairs)
    assert sizes[:-1].min() >= 3 and sizes.max() <= 9
    assert set(sizes[:-1].tolist()) == set(range(3, 10))  # inclusive bounds, every size drawn
    # deterministic by seed, different for another seed
    np.testing.assert_array_equal(aggregate_offsets(pairs, AggregationConfig(min=3, max=9, seed=11)), offsets)
    other = aggregate_offsets(pairs, AggregationConfig(min=3, max=9, seed=12))
    assert not np.array_equal(other[: min(len(other), len(offsets))], offsets[: min(len(other), len(offsets))])
    # min == max is a fixed size
    np.testing.assert_array_equal(aggregate_offsets(10, AggregationConfig(min=4, max=4)), [0, 4, 8, 10])


def test_uniform_rule_equals_python_random_draws():
    import random

    rng = random.Random(5)
    want, qo = [0], 0
    while qo < 500:
        qo = min(qo + rng.randint(2, 6), 500)
        want.append(qo)
    np.testing.assert_array_equal(aggregate_offsets(500, AggregationConfig(min=2, max=6, seed=5)), want)


def test_empty_split_is_an_error():
    with pytest.raises(ConfigError, match="empty"):
        aggregate_offsets(0, AggregationConfig())


# --- trace files ------------------------------------------------------------------------------


def test_write_trace_format_and_round_trip(tmp_path):
    offsets = np.array([0, 3, 10, 11, 20], dtype=np.int64)
    path = tmp_path / "trace.txt"
    write_trace(path, offsets)
    assert path.read_text() == "0, 3, 3\n3, 10, 7\n10, 11, 1\n11, 20, 9\n"
    np.testing.assert_array_equal(read_trace(path), offsets)
    write_trace(path, offsets, count=2)
    assert path.read_text() == "0, 3, 3\n3, 10, 7\n"
    np.testing.assert_array_equal(read_trace(path), offsets[:3])
    write_trace(path, offsets, count=99)  # more than there are: all of them
    np.testing.assert_array_equal(read_trace(path), offsets)


@pytest.mark.parametrize("text, line", [
    ("0, 3, 3\n3, 10, 6\n", 2),  # size does not match
    ("0, 3, 3\n4, 10, 6\n", 2),  # gap
    ("0, 3, 3\nzero, 1, 1\n", 2),  # not integers
    ("0 3 3\n", 1),  # not comma separated
])
def test_read_trace_errors_name_file_and_line(tmp_path, text, line):
    path = tmp_path / "trace.txt"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        read_trace(path)
    assert f"{path}:{line}:" in str(e.value)


def test_read_trace_empty(tmp_path):
    path = tmp_path / "trace.txt"
    path.write_text("")
    with pytest.raises(ConfigError, match="empty"):
        read_trace(path)


# --- configuration and quantile-file errors ---------------------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    ({"fix": 2, "quantile": (1, 2)}, "one aggregation rule"),
    ({"fix": 2, "min": 1, "max": 3}, "one aggregation rule"),
    ({"min": 1, "max": 3, "quantile": (1, 2)}, "one aggregation rule"),
    ({"min": 5, "max": 3}, "min <= max"),
    ({"min": 0, "max": 3}, "min <= max"),
    ({"min": 3}, "together"),
    ({"max": 3}, "together"),
    ({"fix": 0}, "positive"),
    ({"quantile": (100, 300, 200)}, "non-decreasing"),
    ({"quantile": (0, 100)}, "positive"),
    ({"quantile": ()}, "positive"),
])
def test_aggregation_config_validation(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        AggregationConfig(**kwargs)


def test_aggregation_config_rule_and_dict():
    assert AggregationConfig().rule == "fixed"
    assert AggregationConfig(min=1, max=2).rule == "uniform"
    cfg = AggregationConfig(quantile=[100, 200], seed=7)
    assert cfg.rule == "quantile" and cfg.quantile == (100, 200)
    assert cfg.to_dict() == {"rule": "quantile", "fix": None, "min": None, "max": None, "quantile": (100, 200),
                             "seed": 7}


def test_read_quantile_file_formats(tmp_path):
    path = tmp_path / "q.txt"
    path.write_text("1, 2,3 ,  5\n")
    assert read_quantile_file(path) == (1, 2, 3, 5)
    path.write_text("1 2 5")  # whitespace-separated, no newline
    assert read_quantile_file(path) == (1, 2, 5)


@pytest.mark.parametrize("text, message", [
    ("", "no query sizes"),
    ("100, 200, x\n", "comma-separated integers"),
    ("300, 200\n", "non-decreasing"),
    ("0, 200\n", "positive"),
    ("100, 2.5\n", "comma-separated integers"),
])
def test_read_quantile_file_errors_name_the_file(tmp_path, text, message):
    path = tmp_path / "quantile.txt"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as e:
        read_quantile_file(path)
    assert str(path) in str(e.value)


def test_read_quantile_file_missing(tmp_path):
    path = tmp_path / "missing.txt"
    with pytest.raises(ConfigError) as e:
        read_quantile_file(path)
    assert str(path) in str(e.value) and "cannot read" in str(e.value)
