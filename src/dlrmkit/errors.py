"""Precise exceptions, raised where a problem is detected; the CLI turns them into one line."""


class DlrmkitError(Exception):
    """Base class: every error a user can cause by bad input or options."""


class ConfigError(DlrmkitError):
    """An option or configuration value is invalid."""


class DatasetError(DlrmkitError):
    """A dataset directory is missing, of the wrong version, or inconsistent."""


class CheckpointError(DlrmkitError):
    """A checkpoint is missing, truncated, of the wrong version, or does not fit the model."""


class TrainingDivergedError(DlrmkitError):
    """The training loss became NaN or infinite."""


class EvaluationError(DlrmkitError):
    """Metrics cannot be computed on the rows given (e.g. only one class for AUC)."""


class BenchmarkError(DlrmkitError):
    """A benchmark run failed (the system under test raised) and its result is void."""


class DistributedError(DlrmkitError):
    """A distributed job cannot start, or a collective failed (another rank died or timed out)."""


class EngineError(DlrmkitError):
    """A processing engine (Spark, Java) is missing, misconfigured or failed."""
