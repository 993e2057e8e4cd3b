"""LoadGen test settings from mlperf.conf, user.conf and the harness's options.

The conf files are LoadGen's ``model.scenario.key = value`` format; LoadGen itself applies them
(``TestSettings.FromConfig``). We parse them first only to report a bad line with its file and
number, which LoadGen does not, and to apply the RNG seeds LoadGen reads from its built-in rules
file only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mlperf_loadgen as lg

from dlrmkit.config import BenchConfig
from dlrmkit.errors import ConfigError

NANO_SEC = 1_000_000_000
FAST_MIN_DURATION_MS = 5_000  # --fast: short runs for development, as NVIDIA's harness offers
# LoadGen reads these only from its built-in rules file; from a given file we set them ourselves.
_SEED_KEYS = ("qsl_rng_seed", "sample_index_rng_seed", "schedule_rng_seed")
_BUILTIN, _FILE = 0, 2  # FromConfig conf_type: built-in mlperf.conf, or the file given (no extras)


def _is_number(text: str) -> bool:
    for parse in (lambda t: int(t, 0), float):
        try:
            parse(text)
            return True
        except ValueError:
            pass
    return False


def read_conf(path: str | Path) -> dict[str, str]:
    """``{model.scenario.key: value}`` from a LoadGen conf file; errors name the file and line."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read LoadGen config {path}: {e.strerror}") from None
    entries: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        tokens = raw.split()
        if not tokens or tokens[0].startswith("#"):
            continue
        # As LoadGen reads it: 'key = value' separated by spaces and nothing after the value (LoadGen
        # rejects a trailing comment and silently ignores 'key=value'); model names may hold dots.
        parts = tokens[0].rsplit(".", 2)
        if len(tokens) != 3 or tokens[1] != "=" or len(parts) != 3 or not all(parts):
            raise ConfigError(f"{path}:{number}: expected 'model.scenario.key = value' (spaces around '=', "
                              f"nothing after the value), got {raw.strip()!r}")
        if not _is_number(tokens[2]):
            raise ConfigError(f"{path}:{number}: value must be a number, got {tokens[2]!r}")
        entries[tokens[0]] = tokens[2]
    return entries


def lookup(entries: dict[str, str], model: str, scenario: str, key: str) -> str | None:
    """LoadGen's precedence: model.scenario, then *.scenario, then model.*, then *.*."""
    for m, s in ((model, scenario), ("*", scenario), (model, "*"), ("*", "*")):
        value = entries.get(f"{m}.{s}.{key}")
        if value is not None:
            return value
    return None


def _from_config(settings: lg.TestSettings, path: str, model: str, scenario: str, conf_type: int) -> None:
    if settings.FromConfig(path, model, scenario, conf_type) != 0:
        raise ConfigError(f"LoadGen rejected config {path or '(built-in mlperf.conf)'}")


@dataclass(frozen=True)
class ResolvedSettings:
    settings: lg.TestSettings
    performance_sample_count: int  # samples the QSL loads to RAM for a performance run
    expected_qps_source: str  # "option", "user.conf" or "calibrated"


def build_settings(cfg: BenchConfig, total_count: int, calibrated_qps: float | None) -> ResolvedSettings:
    """TestSettings for one run: rules file, user file, then the harness's options on top."""
    settings = lg.TestSettings()
    model, scenario = cfg.model_name, cfg.scenario
    if cfg.mlperf_conf is None:
        _from_config(settings, "", model, scenario, _BUILTIN)
    else:
        rules = read_conf(cfg.mlperf_conf)
        _from_config(settings, str(cfg.mlperf_conf), model, scenario, _FILE)
        for key in _SEED_KEYS:
            value = lookup(rules, model, scenario, key)
            if value is not None:
                setattr(settings, key, int(value, 0))
    user = {}
    if cfg.user_conf is not None:
        user = read_conf(cfg.user_conf)
        _from_config(settings, str(cfg.user_conf), model, scenario, _FILE)

    settings.scenario = getattr(lg.TestScenario, scenario)
    settings.mode = getattr(lg.TestMode, cfg.test_mode)

    if cfg.fast:
        settings.min_duration_ms = FAST_MIN_DURATION_MS
        settings.min_query_count = 1
    if cfg.duration_ms is not None:
        # The reference also sets max_duration_ms; LoadGen then cuts Server runs short and logs
        # an error, so the duration here is the minimum run time only.
        settings.min_duration_ms = cfg.duration_ms
    if cfg.count_queries is not None:
        settings.min_query_count = cfg.count_queries
        settings.max_query_count = cfg.count_queries
    settings.multi_stream_samples_per_query = cfg.samples_per_query_multistream
    if cfg.max_latency_s is not None:
        settings.server_target_latency_ns = int(cfg.max_latency_s * NANO_SEC)
        settings.multi_stream_expected_latency_ns = int(cfg.max_latency_s * NANO_SEC)

    # Throughput targets: an option wins, then user.conf; otherwise what the SUT showed in warm-up.
    # Offline sizes its one query from it, with room (a query finished before the minimum duration
    # makes the run invalid); Server offers half of it, leaving room for latency.
    if cfg.target_qps is not None:
        qps, source = cfg.target_qps, "option"
    elif lookup(user, model, scenario, "target_qps") is not None:
        qps, source = None, "user.conf"
    elif calibrated_qps is not None:
        qps, source = (1.5 * calibrated_qps if scenario == "Offline" else calibrated_qps / 2), "calibrated"
    else:
        qps, source = None, "mlperf.conf"
    if qps is not None:
        settings.server_target_qps = float(qps)
        settings.offline_expected_qps = float(qps)
    # SingleStream/MultiStream size their query list from the expected latency; the warm-up rate
    # (batched, so optimistic) errs toward generating more queries than needed, never fewer.
    if calibrated_qps is not None and lookup(user, model, scenario, "target_latency") is None \
            and cfg.max_latency_s is None:
        settings.single_stream_expected_latency_ns = max(1, int(NANO_SEC / calibrated_qps))
        settings.multi_stream_expected_latency_ns = max(
            1, int(NANO_SEC * cfg.samples_per_query_multistream / calibrated_qps))

    # The rules file asks dlrm runs to load 204800 samples; a smaller test split loads all it has.
    if cfg.samples_per_query_offline is not None:
        perf_count = min(cfg.samples_per_query_offline, total_count)
    elif settings.performance_sample_count_override > 0:
        perf_count = min(settings.performance_sample_count_override, total_count)
    else:
        perf_count = total_count
    settings.performance_sample_count_override = perf_count
    return ResolvedSettings(settings, perf_count, source)
