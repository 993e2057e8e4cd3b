"""LoadGen test settings: conf-file parsing (errors name file and line), LoadGen's key precedence,
and build_settings layering mlperf.conf, user.conf and the harness's options."""

from __future__ import annotations

from pathlib import Path

import mlperf_loadgen as lg
import pytest

from dlrmkit.bench.settings import FAST_MIN_DURATION_MS, build_settings, lookup, read_conf
from dlrmkit.config import BenchConfig
from dlrmkit.errors import ConfigError

SHARED = Path(__file__).resolve().parents[2] / "shared"
MLPERF_CONF = SHARED / "mlperf" / "mlperf.conf"
# mlperf.conf's seeds (the rules file built into LoadGen carries the same ones)
MLPERF_QSL_RNG_SEED = 2085463073848966840


def _write(tmp_path: Path, text: str, name: str = "user.conf") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --- read_conf --------------------------------------------------------------------------------


def test_read_conf_parses_keys_values_and_comments(tmp_path):
    path = _write(tmp_path, "# a comment line\n"
                            "\n"
                            "dlrm.Offline.target_qps = 1500.5\n"
                            "   *.Server.target_latency   =   60   \n"
                            "dlrm.*.performance_sample_count_override = 204800\n"
                            "*.*.qsl_rng_seed = 0x10\n"
                            "dlrm.Offline.target_qps = 1600\n")  # a later line wins
    assert read_conf(path) == {
        "dlrm.Offline.target_qps": "1600",
        "*.Server.target_latency": "60",
        "dlrm.*.performance_sample_count_override": "204800",
        "*.*.qsl_rng_seed": "0x10",
    }


def test_read_conf_empty_file(tmp_path):
    assert read_conf(_write(tmp_path, "# nothing\n\n")) == {}


@pytest.mark.parametrize("lines, bad", [
    (["dlrm.Offline.target_qps = 10", "dlrm.Offline.target_qps 10"], 2),  # no '='
    (["dlrm.Offline = 10"], 1),  # two parts
    (["dlrm.Offline.target_qps ="], 1),  # no value
    (["# ok", "", "dlrm.Offline.target_qps = fast"], 3),  # not a number
    (["dlrm Offline.target_qps = 3"], 1),  # space in the key
    (["= 3"], 1),
])
def test_read_conf_bad_line_names_file_and_line(tmp_path, lines, bad):
    path = _write(tmp_path, "\n".join(lines) + "\n")
    with pytest.raises(ConfigError) as e:
        read_conf(path)
    assert f"{path}:{bad}:" in str(e.value)


def test_read_conf_missing_file(tmp_path):
    with pytest.raises(ConfigError) as e:
        read_conf(tmp_path / "nope.conf")
    assert str(tmp_path / "nope.conf") in str(e.value)


def test_read_conf_accepts_mlperf_rules_file():
    if not MLPERF_CONF.is_file():
        pytest.skip(f"MLPerf's mlperf.conf is not present at {MLPERF_CONF}")
    entries = read_conf(MLPERF_CONF)
    assert entries["dlrm.*.performance_sample_count_override"] == "204800"
    assert entries["*.*.qsl_rng_seed"] == str(MLPERF_QSL_RNG_SEED)


# --- lookup: LoadGen's precedence -------------------------------------------------------------


def test_lookup_precedence():
    entries = {"*.*.k": "1", "dlrm.*.k": "2", "*.Offline.k": "3", "dlrm.Offline.k": "4"}
    assert lookup(entries, "dlrm", "Offline", "k") == "4"
    del entries["dlrm.Offline.k"]
    assert lookup(entries, "dlrm", "Offline", "k") == "3"
    del entries["*.Offline.k"]
    assert lookup(entries, "dlrm", "Offline", "k") == "2"
    del entries["dlrm.*.k"]
    assert lookup(entries, "dlrm", "Offline", "k") == "1"
    del entries["*.*.k"]
    assert lookup(entries, "dlrm", "Offline", "k") is None


def test_lookup_ignores_other_models_and_scenarios():
    entries = {"resnet50.Offline.k": "1", "dlrm.Server.k": "2", "*.Server.k": "3", "dlrm.Offline.other": "4"}
    assert lookup(entries, "dlrm", "Offline", "k") is None
    assert lookup(entries, "dlrm", "Server", "k") == "2"
    assert lookup(entries, "resnet50", "Server", "k") == "3"


# --- build_settings ---------------------------------------------------------------------------


def test_builtin_rules_file_applies():
    resolved = build_settings(BenchConfig(), total_count=1000, calibrated_qps=None)
    s = resolved.settings
    assert s.scenario == lg.TestScenario.Offline and s.mode == lg.TestMode.PerformanceOnly
    assert s.qsl_rng_seed == MLPERF_QSL_RNG_SEED
    assert s.min_duration_ms == 600_000  # mlperf.conf's rule for every scenario
    assert s.server_target_latency_ns == 60 * 1_000_000  # dlrm.Server.target_latency = 60 (ms)
    # dlrm.*.performance_sample_count_override = 204800, clamped to the 1000 samples there are
    assert resolved.performance_sample_count == 1000 == s.performance_sample_count_override
    assert resolved.expected_qps_source == "mlperf.conf"


def test_scenario_and_mode_are_set():
    for scenario in ("Offline", "Server", "SingleStream", "MultiStream"):
        for mode in ("PerformanceOnly", "AccuracyOnly"):
            s = build_settings(BenchConfig(scenario=scenario, test_mode=mode), 10, None).settings
            assert s.scenario == getattr(lg.TestScenario, scenario)
            assert s.mode == getattr(lg.TestMode, mode)
    s = build_settings(BenchConfig(scenario="Server", test_mode="FindPeakPerformance"), 10, None).settings
    assert s.mode == lg.TestMode.FindPeakPerformance


def test_user_conf_values_are_applied(tmp_path):
    user = _write(tmp_path, "dlrm.Offline.min_duration = 1234\n"
                            "dlrm.Offline.target_qps = 77\n"
                            "dlrm.Server.target_qps = 55\n"
                            "*.Server.target_latency = 15\n"
                            "dlrm.*.performance_sample_count_override = 100\n")
    resolved = build_settings(BenchConfig(user_conf=str(user)), total_count=1000, calibrated_qps=5000.0)
    s = resolved.settings
    assert s.min_duration_ms == 1234
    assert s.offline_expected_qps == 77.0  # user.conf beats the calibrated rate
    assert resolved.expected_qps_source == "user.conf"
    assert resolved.performance_sample_count == 100 == s.performance_sample_count_override

    resolved = build_settings(BenchConfig(scenario="Server", user_conf=str(user)), 1000, 5000.0)
    s = resolved.settings
    assert s.server_target_qps == 55.0 and resolved.expected_qps_source == "user.conf"
    assert s.server_target_latency_ns == 15 * 1_000_000
    assert s.min_duration_ms == 600_000  # the Offline-only line does not apply


def test_options_override_user_conf(tmp_path):
    user = _write(tmp_path, "dlrm.Offline.min_duration = 1234\n"
                            "dlrm.Offline.target_qps = 77\n"
                            "dlrm.Server.target_latency = 15\n")
    cfg = BenchConfig(user_conf=str(user), duration_ms=999, target_qps=5.0)
    resolved = build_settings(cfg, 1000, calibrated_qps=321.0)
    assert resolved.settings.min_duration_ms == 999
    assert resolved.settings.offline_expected_qps == 5.0
    assert resolved.expected_qps_source == "option"
    s = build_settings(BenchConfig(scenario="Server", user_conf=str(user), max_latency_s=0.25), 10, None).settings
    assert s.server_target_latency_ns == 250_000_000


def test_duration_and_fast():
    assert build_settings(BenchConfig(duration_ms=300), 10, None).settings.min_duration_ms == 300
    fast = build_settings(BenchConfig(fast=True), 10, None).settings
    assert fast.min_duration_ms == FAST_MIN_DURATION_MS and fast.min_query_count == 1
    both = build_settings(BenchConfig(fast=True, duration_ms=300), 10, None).settings
    assert both.min_duration_ms == 300 and both.min_query_count == 1


def test_count_queries_sets_min_and_max():
    s = build_settings(BenchConfig(count_queries=17), 10, None).settings
    assert s.min_query_count == 17 and s.max_query_count == 17


def test_performance_sample_count():
    # the rules file's 204800 clamped to the QSL
    assert build_settings(BenchConfig(), 50, None).performance_sample_count == 50
    # --samples-per-query-offline sets it, clamped too
    resolved = build_settings(BenchConfig(samples_per_query_offline=20), 50, None)
    assert resolved.performance_sample_count == 20 == resolved.settings.performance_sample_count_override
    assert build_settings(BenchConfig(samples_per_query_offline=200), 50, None).performance_sample_count == 50


def test_target_qps_sources():
    option = build_settings(BenchConfig(target_qps=42.0), 10, calibrated_qps=100.0)
    assert option.expected_qps_source == "option" and option.settings.offline_expected_qps == 42.0
    server_option = build_settings(BenchConfig(scenario="Server", target_qps=42.0), 10, 100.0)
    assert server_option.settings.server_target_qps == 42.0

    offline = build_settings(BenchConfig(), 10, calibrated_qps=100.0)
    assert offline.expected_qps_source == "calibrated"
    assert offline.settings.offline_expected_qps > 100.0  # room so the one query outlasts the duration
    server = build_settings(BenchConfig(scenario="Server"), 10, calibrated_qps=100.0)
    assert server.expected_qps_source == "calibrated"
    assert 0 < server.settings.server_target_qps < 100.0  # headroom for latency

    none = build_settings(BenchConfig(), 10, calibrated_qps=None)
    assert none.expected_qps_source not in ("option", "user.conf", "calibrated")


def test_calibrated_latencies_for_stream_scenarios():
    s = build_settings(BenchConfig(scenario="SingleStream"), 10, calibrated_qps=1000.0).settings
    assert s.single_stream_expected_latency_ns == 1_000_000
    s = build_settings(BenchConfig(scenario="MultiStream", samples_per_query_multistream=4), 10, 1000.0).settings
    assert s.multi_stream_samples_per_query == 4
    assert s.multi_stream_expected_latency_ns == 4_000_000


def test_explicit_mlperf_conf_applies_its_seeds(tmp_path):
    rules = _write(tmp_path, "*.*.qsl_rng_seed = 42\n"
                             "*.*.sample_index_rng_seed = 43\n"
                             "dlrm.*.schedule_rng_seed = 44\n"
                             "resnet50.*.schedule_rng_seed = 45\n"
                             "dlrm.Offline.min_duration = 2500\n", name="rules.conf")
    s = build_settings(BenchConfig(mlperf_conf=str(rules)), 10, None).settings
    assert (s.qsl_rng_seed, s.sample_index_rng_seed, s.schedule_rng_seed) == (42, 43, 44)
    assert s.min_duration_ms == 2500
    # a user.conf on top keeps the rules file's seeds
    user = _write(tmp_path, "dlrm.Offline.target_qps = 9\n")
    s = build_settings(BenchConfig(mlperf_conf=str(rules), user_conf=str(user)), 10, None).settings
    assert s.qsl_rng_seed == 42 and s.offline_expected_qps == 9.0


def test_mlperf_rules_file_given_explicitly():
    if not MLPERF_CONF.is_file():
        pytest.skip(f"MLPerf's mlperf.conf is not present at {MLPERF_CONF}")
    resolved = build_settings(BenchConfig(mlperf_conf=str(MLPERF_CONF)), 1000, None)
    s = resolved.settings
    assert s.qsl_rng_seed == MLPERF_QSL_RNG_SEED
    assert s.min_duration_ms == 600_000
    assert resolved.performance_sample_count == 1000


def test_bad_user_conf_names_file_and_line(tmp_path):
    user = _write(tmp_path, "dlrm.Offline.target_qps = 10\n\ndlrm.Offline.min_duration = soon\n")
    with pytest.raises(ConfigError) as e:
        build_settings(BenchConfig(user_conf=str(user)), 10, None)
    assert f"{user}:3:" in str(e.value)


def test_trailing_comment_in_user_conf_is_applied_or_named(tmp_path):
    user = _write(tmp_path, "# tuned\ndlrm.Offline.min_duration = 1234 # ms\n")
    try:
        s = build_settings(BenchConfig(user_conf=str(user)), 10, None).settings
    except ConfigError as e:
        assert f"{user}:2" in str(e)
    else:
        assert s.min_duration_ms == 1234


def test_key_value_without_spaces_is_applied_or_named(tmp_path):
    user = _write(tmp_path, "dlrm.Offline.target_qps=500\n")
    try:
        resolved = build_settings(BenchConfig(user_conf=str(user)), 10, None)
    except ConfigError as e:
        assert f"{user}:1" in str(e)
    else:
        assert resolved.settings.offline_expected_qps == 500.0


def test_missing_user_conf(tmp_path):
    with pytest.raises(ConfigError) as e:
        build_settings(BenchConfig(user_conf=str(tmp_path / "user.conf")), 10, None)
    assert str(tmp_path / "user.conf") in str(e.value)
