"""Checkpoints: complete (model, optimizer, step, RNG, configs, format version) and atomic.

A checkpoint is a ``torch.save`` of a dict of plain values and tensors (loadable with
``weights_only=True``)::

    format, format_version     "dlrmkit-checkpoint", 1
    model_config               ModelConfig as a dict
    model_state                the DLRM's state dict
    optimizer_state            DLRMOptimizer.state_dict() or None
    train_state                {"step", "epoch", "samples", ...} or None
    train_config               TrainConfig as a dict or None
    rng                        {"torch": ByteTensor}
    extra                      anything JSON-like (metrics, dataset path)
    sharded                    only from a distributed run: the shard files holding the tables
                               (see `dlrmkit.checkpoint_shards`); read whole by default
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from dlrmkit.config import ModelConfig
from dlrmkit.errors import CheckpointError, ConfigError
from dlrmkit.model import DLRM, build_model

FORMAT_NAME = "dlrmkit-checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(path: str | os.PathLike, model: DLRM, model_config: ModelConfig, *,
                    optimizer_state: dict | None = None, train_state: dict | None = None,
                    train_config: dict | None = None, extra: dict | None = None) -> Path:
    """Write atomically: to a temporary name beside ``path``, fsync, then rename over it."""
    return write_atomic(path, checkpoint_payload(model.state_dict(), model_config, optimizer_state=optimizer_state,
                                                 train_state=train_state, train_config=train_config, extra=extra))


def checkpoint_payload(model_state: dict, model_config: ModelConfig, *, optimizer_state: dict | None = None,
                       train_state: dict | None = None, train_config: dict | None = None,
                       extra: dict | None = None) -> dict:
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "model_config": model_config.to_dict(),
        "model_state": model_state,
        "optimizer_state": optimizer_state,
        "train_state": train_state,
        "train_config": train_config,
        "rng": {"torch": torch.get_rng_state()},
        "extra": extra or {},
    }


def write_atomic(path: str | os.PathLike, payload: dict) -> Path:
    """torch.save to a temporary name beside ``path``, fsync, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | os.PathLike, assemble_shards: bool = True) -> dict:
    """Read and validate a dlrmkit checkpoint; raises CheckpointError with what is wrong.

    A distributed run's checkpoint comes back whole (tables read from its shard files) unless
    ``assemble_shards`` is False: then each process reads its own rows (`checkpoint_shards.RowReader`)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=not assemble_shards)
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"{path}: cannot be read as a checkpoint (truncated or corrupt?): "
                              f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    return validate_checkpoint(ckpt, path, assemble_shards)


def validate_checkpoint(ckpt, path, assemble_shards: bool = True) -> dict:
    """``ckpt`` (a loaded payload) if it is a dlrmkit checkpoint of a readable version; a sharded
    one with its tables read in, unless ``assemble_shards`` is False."""
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path}: not a dlrmkit checkpoint (format {ckpt.get('format') if isinstance(ckpt, dict) else type(ckpt).__name__!r})")
    if ckpt.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {ckpt.get('format_version')!r} is not supported "
                              f"(this dlrmkit reads version {FORMAT_VERSION})")
    if assemble_shards and "sharded" in ckpt:
        from dlrmkit.checkpoint_shards import assemble  # it builds on this module's writer

        return assemble(ckpt, path)
    return ckpt


def load_model_state(model: DLRM, state: dict, source: str) -> None:
    """Load a state dict, naming every missing, unexpected or mis-shaped tensor on mismatch."""
    own = model.state_dict()
    problems = []
    for key in sorted(set(own) | set(state)):
        if key not in state:
            problems.append(f"missing {key}")
        elif key not in own:
            problems.append(f"unexpected {key}")
        elif tuple(own[key].shape) != tuple(state[key].shape):
            problems.append(f"{key}: checkpoint {tuple(state[key].shape)} vs model {tuple(own[key].shape)}")
    if problems:
        shown = "; ".join(problems[:4]) + (f"; and {len(problems) - 4} more" if len(problems) > 4 else "")
        raise CheckpointError(f"{source}: does not match the model architecture: {shown}")
    model.load_state_dict(state)


def model_from_checkpoint(ckpt: dict, source: str = "checkpoint") -> tuple[DLRM, ModelConfig]:
    """Build the DLRM a checkpoint describes and load its weights."""
    try:
        cfg = ModelConfig.from_dict(ckpt["model_config"])
    except (KeyError, TypeError, ConfigError) as e:
        raise CheckpointError(f"{source}: model_config is missing or invalid ({e})") from None
    model = build_model(cfg, init_tables=False)  # every row comes from the checkpoint
    load_model_state(model, ckpt["model_state"], source)
    return model, cfg
