"""Typed, validated configuration for each concern, and the model presets.

Configs are frozen dataclasses checked on construction; presets are functions. Nothing here
imports the rest of dlrmkit, so every layer may use it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from dlrmkit.errors import ConfigError

NUM_DENSE = 13
NUM_SPARSE = 26

# Rows per categorical column in the Criteo Kaggle set, as the DLRM reference counts them.
KAGGLE_CARDINALITIES: tuple[int, ...] = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
    27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
)

INTERACTIONS = ("dot", "cat")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a DLRM.

    ``bottom_mlp`` includes its input width (the number of dense features), as the DLRM
    reference's ``--arch-mlp-bot`` does; ``top_mlp`` excludes it (the interaction decides it),
    as ``--arch-mlp-top`` does. ``max_index_range`` caps every table (indices are taken modulo it).
    """

    table_sizes: tuple[int, ...]
    embedding_dim: int
    bottom_mlp: tuple[int, ...]
    top_mlp: tuple[int, ...]
    interaction: str = "dot"
    interaction_self: bool = False
    max_index_range: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "table_sizes", tuple(int(t) for t in self.table_sizes))
        object.__setattr__(self, "bottom_mlp", tuple(int(t) for t in self.bottom_mlp))
        object.__setattr__(self, "top_mlp", tuple(int(t) for t in self.top_mlp))
        _require(len(self.table_sizes) > 0, "model needs at least one embedding table")
        _require(all(t > 0 for t in self.table_sizes), f"table sizes must be positive, got {self.table_sizes}")
        _require(self.embedding_dim > 0, f"embedding_dim must be positive, got {self.embedding_dim}")
        _require(len(self.bottom_mlp) >= 2, f"bottom MLP needs input and output widths, got {self.bottom_mlp}")
        _require(len(self.top_mlp) >= 1 and self.top_mlp[-1] == 1,
                 f"top MLP must end in one output unit, got {self.top_mlp}")
        _require(all(w > 0 for w in self.bottom_mlp + self.top_mlp), "MLP widths must be positive")
        _require(self.interaction in INTERACTIONS,
                 f"interaction must be one of {INTERACTIONS}, got {self.interaction!r}")
        if self.interaction == "dot":
            _require(self.bottom_mlp[-1] == self.embedding_dim,
                     f"dot interaction needs the bottom MLP to end in the embedding dim "
                     f"{self.embedding_dim}, got {self.bottom_mlp[-1]}")
        if self.max_index_range is not None:
            _require(self.max_index_range > 0, f"max_index_range must be positive, got {self.max_index_range}")

    @property
    def num_dense(self) -> int:
        return self.bottom_mlp[0]

    @property
    def effective_table_sizes(self) -> tuple[int, ...]:
        """Table sizes after the ``max_index_range`` cap."""
        if self.max_index_range is None:
            return self.table_sizes
        return tuple(min(t, self.max_index_range) for t in self.table_sizes)

    def with_max_index_range(self, n: int | None, source: str = "the checkpoint") -> "ModelConfig":
        """This model run on indices mod ``n`` (the DLRM reference's ``--max-ind-range`` at
        inference): for a checkpoint that does not record its range, as the reference's do. A
        recorded range must agree, and no table may have more than ``n`` rows (rows a model
        trained with that range could not have)."""
        if n is None or n == self.max_index_range:
            return self
        if self.max_index_range is not None:
            raise ConfigError(f"{source} was trained with max index range {self.max_index_range}, not {n}")
        big = [(f, t) for f, t in enumerate(self.table_sizes) if t > n]
        if big:
            f, t = big[0]
            raise ConfigError(f"{source}: table {f} has {t} rows, more than max index range {n}: "
                              f"it was not trained on indices mod {n}")
        return dataclasses.replace(self, max_index_range=n)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        return cls(**d)


PRESETS = ("tiny", "kaggle", "terabyte")


def preset(name: str, table_sizes: tuple[int, ...], num_dense: int = NUM_DENSE) -> ModelConfig:
    """A named architecture for the given tables.

    - ``tiny``: dim 16, bottom 13-64-16, top 64-1: for tests and quick looks.
    - ``kaggle``: the DLRM reference's Criteo Kaggle model: dim 16, 13-512-256-64-16, 512-256-1.
    - ``terabyte``: the MLPerf DLRM model: dim 128, 13-512-256-128, 1024-1024-512-256-1, tables
      capped at 40M rows.
    """
    if name == "tiny":
        return ModelConfig(table_sizes, 16, (num_dense, 64, 16), (64, 1))
    if name == "kaggle":
        return ModelConfig(table_sizes, 16, (num_dense, 512, 256, 64, 16), (512, 256, 1))
    if name == "terabyte":
        return ModelConfig(table_sizes, 128, (num_dense, 512, 256, 128), (1024, 1024, 512, 256, 1),
                           max_index_range=40_000_000)
    raise ConfigError(f"unknown preset {name!r}; expected one of {PRESETS}")


@dataclass(frozen=True)
class SynthConfig:
    """Synthetic Criteo-like data: sizes, seed and the planted teacher's knobs."""

    rows: int = 1_000_000
    seed: int = 0
    layout: str = "kaggle"  # kaggle: one train.txt; terabyte: day_0..day_{days-1}
    days: int = 24  # terabyte layout only
    cardinalities: tuple[int, ...] = KAGGLE_CARDINALITIES
    cardinality_scale: float = 1.0
    click_rate: float = 0.25
    zipf_exponent: float = 1.1
    chunk_rows: int = 1 << 18
    workers: int = 2

    def __post_init__(self) -> None:
        object.__setattr__(self, "cardinalities", tuple(int(c) for c in self.cardinalities))
        _require(self.rows >= 14, f"rows must be at least 14 (7 'days' of 2 rows), got {self.rows}")
        _require(self.layout in ("kaggle", "terabyte"), f"layout must be kaggle or terabyte, got {self.layout!r}")
        _require(self.days >= 2, f"days must be at least 2, got {self.days}")
        _require(len(self.cardinalities) == NUM_SPARSE,
                 f"need {NUM_SPARSE} cardinalities, got {len(self.cardinalities)}")
        _require(0 < self.cardinality_scale <= 1, f"cardinality_scale must be in (0, 1], got {self.cardinality_scale}")
        _require(0 < self.click_rate < 1, f"click_rate must be in (0, 1), got {self.click_rate}")
        _require(self.zipf_exponent > 1, f"zipf_exponent must exceed 1, got {self.zipf_exponent}")
        _require(self.chunk_rows > 0 and self.workers > 0, "chunk_rows and workers must be positive")

    @property
    def table_sizes(self) -> tuple[int, ...]:
        """Cardinalities after scaling; every table keeps at least 2 rows (missing + one value)."""
        return tuple(max(2, round(c * self.cardinality_scale)) for c in self.cardinalities)


OPTIMIZERS = ("sgd", "adagrad")
SHARDINGS = ("auto", "table-wise", "row-wise")  # embedding tables across distributed ranks
DIST_BACKENDS = ("auto", "gloo", "nccl")


@dataclass(frozen=True)
class ScheduleConfig:
    """The MLPerf DLRM learning-rate schedule: linear warm-up, then polynomial (power 2) decay."""

    warmup_steps: int = 0
    decay_start_step: int = 0
    decay_steps: int = 0

    def __post_init__(self) -> None:
        _require(min(self.warmup_steps, self.decay_start_step, self.decay_steps) >= 0,
                 "schedule steps must be non-negative")
        if self.decay_steps > 0:
            _require(self.decay_start_step >= self.warmup_steps,
                     f"decay must start after warm-up ({self.decay_start_step} < {self.warmup_steps})")


@dataclass(frozen=True)
class TrainConfig:
    """Everything `dlrmkit train` does besides the architecture."""

    optimizer: str = "adagrad"
    learning_rate: float = 0.05
    batch_size: int = 2048
    epochs: float = 1.0
    max_steps: int | None = None
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    eval_every: int | None = None  # steps; None: at the end of each epoch only
    eval_batch_size: int = 16384
    eval_max_rows: int | None = None
    target_auc: float | None = None
    checkpoint_every: int | None = None  # steps; None: at evaluations and the end
    bf16: bool = False
    seed: int = 0
    threads: int | None = None
    log_every: int = 50
    shuffle: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.schedule, dict):
            object.__setattr__(self, "schedule", ScheduleConfig(**self.schedule))
        _require(self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        _require(self.learning_rate > 0, f"learning_rate must be positive, got {self.learning_rate}")
        _require(self.batch_size > 0 and self.eval_batch_size > 0, "batch sizes must be positive")
        _require(self.epochs > 0, f"epochs must be positive, got {self.epochs}")
        _require(self.max_steps is None or self.max_steps > 0, "max_steps must be positive")
        _require(self.eval_every is None or self.eval_every > 0, "eval_every must be positive")
        _require(self.checkpoint_every is None or self.checkpoint_every > 0, "checkpoint_every must be positive")
        _require(self.target_auc is None or 0.5 < self.target_auc <= 1, "target_auc must be in (0.5, 1]")
        _require(self.log_every > 0, "log_every must be positive")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        return cls(**d)


BAD_LINE_POLICIES = ("error", "skip")


@dataclass(frozen=True)
class PreprocessConfig:
    """Raw Criteo text -> dlrmkit dataset (see dlrmkit.data.preprocess)."""

    dataset: str  # kaggle: one train.txt cut into 7 days; terabyte: one file per day, in order
    inputs: tuple[str, ...]
    vocab: str = "hash"
    max_index_range: int | None = None
    frequency_threshold: int = 1
    on_bad_line: str = "error"
    sub_sample_rate: float = 0.0
    seed: int = 0
    workers: int = 2
    block_bytes: int = 8 << 20
    keep_stage: bool = False
    parquet: bool = False  # also write the splits as Parquet (OUT/parquet/<split>.parquet)

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(str(i) for i in self.inputs))
        _require(self.dataset in ("kaggle", "terabyte"), f"dataset must be kaggle or terabyte, got {self.dataset!r}")
        _require(len(self.inputs) >= 1, "at least one input file is needed")
        if self.dataset == "kaggle":
            _require(len(self.inputs) == 1, f"kaggle takes one train.txt, got {len(self.inputs)} inputs")
        else:
            _require(len(self.inputs) >= 2, "terabyte needs at least two day files (the last is cut into test and val)")
        _require(self.vocab in ("hash", "frequency", "reference"),
                 f"vocab must be hash, frequency or reference, got {self.vocab!r}")
        if self.vocab == "hash":
            _require(self.max_index_range is not None, "--vocab hash needs --max-ind-range N (the table size)")
        _require(self.max_index_range is None or self.max_index_range > 0, "max_index_range must be positive")
        _require(self.frequency_threshold >= 1, "frequency_threshold must be at least 1")
        _require(self.on_bad_line in BAD_LINE_POLICIES, f"on_bad_line must be one of {BAD_LINE_POLICIES}")
        _require(0.0 <= self.sub_sample_rate < 1.0, f"sub_sample_rate must be in [0, 1), got {self.sub_sample_rate}")
        _require(self.workers >= 1 and self.block_bytes >= 1 << 16, "workers >= 1 and block_bytes >= 64 KiB")


# MLPerf DLRM: each LoadGen sample is a group of user-item pairs whose size is drawn from this
# quantile function (MLPerf's tools/dist_quantile.txt: 20 equally likely sizes, mean 270).
MLPERF_QUERY_SIZE_QUANTILE: tuple[int, ...] = (
    100, 100, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 300, 300, 400, 500, 600, 700,
)
MLPERF_DLRM_REFERENCE_AUC = 0.8025  # FP32 reference AUC of MLPerf's Terabyte model (tb00_40M.pt)

SCENARIOS = ("Offline", "Server", "SingleStream", "MultiStream")
TEST_MODES = ("PerformanceOnly", "AccuracyOnly", "FindPeakPerformance")
# config version -> fraction of the FP32 reference AUC the accuracy run must reach
ACCURACY_TARGETS = {"default": 0.99, "high_accuracy": 0.999}


@dataclass(frozen=True)
class AggregationConfig:
    """How consecutive user-item pairs are grouped into one LoadGen sample.

    Exactly one rule applies, as in the MLPerf reference harness: ``quantile`` (sizes drawn by
    inverse-transform sampling from the quantile function), else ``min``/``max`` (uniform sizes),
    else ``fix`` (a fixed size; 1 when nothing is given). ``seed`` seeds numpy's legacy generator
    for the quantile rule (the reference's ``--numpy-rand-seed``) and Python's for the uniform one.
    """

    fix: int | None = None
    min: int | None = None
    max: int | None = None
    quantile: tuple[int, ...] | None = None
    seed: int = 123

    def __post_init__(self) -> None:
        if self.quantile is not None:
            object.__setattr__(self, "quantile", tuple(int(q) for q in self.quantile))
            _require(len(self.quantile) > 0 and all(q > 0 for q in self.quantile),
                     f"quantile sizes must be positive, got {self.quantile}")
            _require(list(self.quantile) == sorted(self.quantile),
                     "quantile sizes must be non-decreasing (a quantile function)")
        rules = [self.fix is not None, self.min is not None or self.max is not None, self.quantile is not None]
        _require(sum(rules) <= 1, "give one aggregation rule: a fixed size, a min/max range, or a quantile file")
        _require(self.fix is None or self.fix > 0, f"samples-to-aggregate-fix must be positive, got {self.fix}")
        if self.min is not None or self.max is not None:
            _require(self.min is not None and self.max is not None,
                     "samples-to-aggregate-min and -max must be given together")
            _require(0 < self.min <= self.max, f"need 0 < min <= max, got min {self.min}, max {self.max}")

    @property
    def rule(self) -> str:
        if self.quantile is not None:
            return "quantile"
        return "uniform" if self.min is not None else "fixed"

    def to_dict(self) -> dict:
        return {"rule": self.rule, **dataclasses.asdict(self)}


@dataclass(frozen=True)
class BenchConfig:
    """One LoadGen run: scenario, mode, and the knobs of the MLPerf DLRM reference harness.

    Fields left None take their value from mlperf.conf / user.conf (or LoadGen's defaults).
    ``max_batchsize`` counts LoadGen samples (each a group of pairs), as in the reference.
    """

    scenario: str = "Offline"
    test_mode: str = "PerformanceOnly"
    config_ver: str = "default"
    model_name: str = "dlrm"  # the model key looked up in mlperf.conf / user.conf
    max_batchsize: int = 128
    threads: int = 1
    samples_per_query_offline: int | None = None  # samples loaded to RAM for performance runs
    samples_per_query_multistream: int = 8
    count_samples: int | None = None
    count_queries: int | None = None
    duration_ms: int | None = None
    target_qps: float | None = None
    max_latency_s: float | None = None
    fast: bool = False
    mlperf_conf: str | None = None  # None: the rules file built into LoadGen
    user_conf: str | None = None
    reference_auc: float | None = None  # None: measured with the FP32 model on the same samples

    def __post_init__(self) -> None:
        _require(self.scenario in SCENARIOS, f"scenario must be one of {SCENARIOS}, got {self.scenario!r}")
        _require(self.test_mode in TEST_MODES, f"test mode must be one of {TEST_MODES}, got {self.test_mode!r}")
        _require(self.config_ver in ACCURACY_TARGETS,
                 f"config version must be one of {tuple(ACCURACY_TARGETS)}, got {self.config_ver!r}")
        if self.test_mode == "FindPeakPerformance":
            _require(self.scenario == "Server", "FindPeakPerformance applies to the Server scenario only")
        _require(self.max_batchsize > 0 and self.threads > 0, "max_batchsize and threads must be positive")
        for name in ("samples_per_query_offline", "count_samples", "count_queries", "duration_ms"):
            value = getattr(self, name)
            _require(value is None or value > 0, f"{name} must be positive, got {value}")
        _require(self.samples_per_query_multistream > 0, "samples_per_query_multistream must be positive")
        _require(self.target_qps is None or self.target_qps > 0, f"target_qps must be positive, got {self.target_qps}")
        _require(self.max_latency_s is None or self.max_latency_s > 0, "max_latency must be positive")
        _require(self.reference_auc is None or 0.5 < self.reference_auc <= 1,
                 f"reference AUC must be in (0.5, 1], got {self.reference_auc}")

    @property
    def accuracy_target(self) -> float:
        return ACCURACY_TARGETS[self.config_ver]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


EMBEDDING_PRECISIONS = ("fp32", "int8-rowwise", "int8-table")
MLP_PRECISIONS = ("fp32", "bf16", "int8", "int8-static")
ONNX_MLP_PRECISIONS = ("fp32", "int8")  # what ONNX Runtime runs here (int8: its dynamic quantization)


@dataclass(frozen=True)
class Precision:
    """Number formats of an inference model: the tables and the MLPs (with the interaction).

    MLPs: ``int8`` quantizes activations per batch (dynamic); ``int8-static`` with scales fixed
    by calibration on a slice of the validation split, as MLPerf calibrates on a fixed set."""

    embeddings: str = "fp32"
    mlp: str = "fp32"

    def __post_init__(self) -> None:
        _require(self.embeddings in EMBEDDING_PRECISIONS,
                 f"embeddings precision must be one of {EMBEDDING_PRECISIONS}, got {self.embeddings!r}")
        _require(self.mlp in MLP_PRECISIONS, f"MLP precision must be one of {MLP_PRECISIONS}, got {self.mlp!r}")

    @property
    def is_fp32(self) -> bool:
        return self.embeddings == "fp32" and self.mlp == "fp32"

    def __str__(self) -> str:
        return f"embeddings {self.embeddings}, MLPs {self.mlp}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# The precision each MLPerf config version runs unless told otherwise: the fastest whose AUC met
# the target (99% / 99.9% of FP32) on the synthetic and real-row datasets (see BENCHMARKS.md).
PRECISION_FOR_CONFIG_VER = {
    "default": Precision("int8-rowwise", "bf16"),
    "high_accuracy": Precision("int8-rowwise", "fp32"),
}
