"""The training loop: learning to the oracle, exact resume, divergence, run files, checkpoints."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from dlrmkit.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from dlrmkit.config import ModelConfig, SynthConfig, TrainConfig, preset
from dlrmkit.data import synth
from dlrmkit.data.dataset import Dataset
from dlrmkit.errors import CheckpointError, ConfigError, TrainingDivergedError
from dlrmkit.model import build_model
from dlrmkit.train.evaluate import evaluate, predict_logits
from dlrmkit.train.loop import train

# threads=1: tiny models train faster and more steadily on one thread on a 2-core machine.
SHORT = TrainConfig(optimizer="adagrad", learning_rate=0.02, batch_size=2048, max_steps=12,
                    eval_every=4, log_every=5, threads=1)


def _tiny(meta_or_ds) -> ModelConfig:
    sizes = meta_or_ds.table_sizes if isinstance(meta_or_ds, Dataset) else meta_or_ds["table_sizes"]
    return preset("tiny", tuple(sizes))


@pytest.fixture(scope="module")
def short_run(small_data, small_meta, tmp_path_factory):
    run = tmp_path_factory.mktemp("short_run")
    summary = train(small_data, run, _tiny(small_meta), SHORT, progress=False)
    return run, summary


def test_training_approaches_oracle_auc(tmp_path):
    cfg = SynthConfig(rows=2_000_000, cardinality_scale=0.001, seed=3, workers=2)
    meta = synth.write_binary(cfg, tmp_path / "data", progress=False)
    summary = train(tmp_path / "data", tmp_path / "run", _tiny(meta),
                    TrainConfig(optimizer="adagrad", learning_rate=0.02, batch_size=1024, epochs=2, threads=1),
                    progress=False)
    test_auc, oracle = summary["test"]["auc"], meta["oracle_auc"]["test"]
    print(f"test AUC {test_auc:.4f} oracle {oracle:.4f} gap {oracle - test_auc:.4f}")
    assert summary["epochs"] == pytest.approx(2.0)
    assert oracle - test_auc < 0.02, (test_auc, oracle)
    assert test_auc > 0.7  # a constant predictor scores 0.5
    assert test_auc < oracle + 0.01  # no model beats the teacher beyond sampling noise


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad"])
def test_resume_is_exact(small_data, small_meta, tmp_path, optimizer):
    # 17143 train rows / 2048 = 9 steps an epoch: the resumed half crosses an epoch boundary
    cfg = TrainConfig(optimizer=optimizer, learning_rate=0.05 if optimizer == "sgd" else 0.02,
                      batch_size=2048, max_steps=6, threads=1, eval_max_rows=500)
    model_cfg = _tiny(small_meta)
    train(small_data, tmp_path / "resumed", model_cfg, cfg, progress=False)
    half = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")
    assert half["train_state"]["step"] == 6
    resumed = train(small_data, tmp_path / "resumed", model_cfg, replace(cfg, max_steps=12), resume=True,
                    progress=False)
    fresh = train(small_data, tmp_path / "fresh", model_cfg, replace(cfg, max_steps=12), progress=False)
    assert resumed["steps"] == fresh["steps"] == 12
    assert resumed["samples"] == fresh["samples"]
    a = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "fresh" / "checkpoint.pt")
    assert a["model_state"].keys() == b["model_state"].keys()
    for k in a["model_state"]:
        assert torch.equal(a["model_state"][k], b["model_state"][k]), k
    # and the run moved away from the half-way weights
    assert not torch.equal(a["model_state"]["embeddings.weight"], half["model_state"]["embeddings.weight"])
    assert torch.equal(a["optimizer_state"]["sparse"].get("accumulator", torch.zeros(1)),
                       b["optimizer_state"]["sparse"].get("accumulator", torch.zeros(1)))
    assert resumed["test"]["auc"] == fresh["test"]["auc"]


def test_resume_with_other_architecture_is_refused(small_data, small_meta, tmp_path):
    cfg = replace(SHORT, max_steps=1)
    train(small_data, tmp_path / "run", _tiny(small_meta), cfg, progress=False)
    other = replace(_tiny(small_meta), top_mlp=(16, 1))
    with pytest.raises(CheckpointError):
        train(small_data, tmp_path / "run", other, replace(cfg, max_steps=2), resume=True, progress=False)


def test_nan_in_data_raises_diverged(small_data, small_meta, copy_dataset):
    data = copy_dataset(small_data)
    dense = np.memmap(data / "train" / "dense.bin", dtype=np.float32, mode="r+")
    dense[::13] = np.nan  # column 0 of every row
    dense.flush()
    del dense
    with pytest.raises(TrainingDivergedError, match="step 1"):
        train(data, data.parent / "run", _tiny(small_meta), replace(SHORT, max_steps=3), progress=False)


def test_huge_learning_rate_raises_diverged(small_data, small_meta, tmp_path):
    cfg = TrainConfig(optimizer="sgd", learning_rate=1e6, batch_size=1024, max_steps=30, threads=1)
    with pytest.raises(TrainingDivergedError, match="learning rate"):
        train(small_data, tmp_path / "run", _tiny(small_meta), cfg, progress=False)


def test_run_files(short_run, small_meta):
    run, summary = short_run
    on_disk = json.loads((run / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    for key in ("steps", "epochs", "samples", "stopped_early", "train_samples_per_s", "train_seconds", "val",
                "test", "best_val_auc", "oracle_auc", "checkpoint", "config"):
        assert key in on_disk, key
    assert on_disk["steps"] == 12
    assert on_disk["stopped_early"] is False
    assert on_disk["samples"] == 12 * 2048 - (9 * 2048 - 17143)  # epoch 0's short last batch
    assert on_disk["epochs"] == pytest.approx(12 / 9)
    assert on_disk["oracle_auc"] == small_meta["oracle_auc"]
    assert on_disk["config"]["model"] == json.loads(json.dumps(_tiny(small_meta).to_dict()))
    for split in ("val", "test"):
        for key in ("auc", "log_loss", "accuracy", "rows", "positive_rate"):
            assert key in on_disk[split], (split, key)
    assert on_disk["test"]["rows"] == small_meta["splits"]["test"]["rows"]
    assert (run / "config.json").is_file() and (run / "checkpoint.pt").is_file() and (run / "best.pt").is_file()

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    trains = [r for r in records if r["type"] == "train"]
    evals = [r for r in records if r["type"] == "eval"]
    assert [r["step"] for r in trains] == [5, 10, 12]
    for r in trains:
        assert {"step", "epoch", "loss", "lr", "samples_per_s"} <= r.keys()
        assert math.isfinite(r["loss"]) and 0 < r["loss"] < 1.5 and r["lr"] == 0.02
    assert [(r["split"], r["step"]) for r in evals] == [("val", 4), ("val", 8), ("val", 12), ("test", 12)]
    for r in evals:
        assert {"auc", "log_loss", "accuracy", "rows", "positive_rate", "step"} <= r.keys()
    assert on_disk["best_val_auc"] == max(r["auc"] for r in evals if r["split"] == "val")
    assert on_disk["val"]["auc"] == evals[2]["auc"]


def test_summary_metrics_match_sklearn_on_checkpoint_predictions(short_run, small_data):
    run, summary = short_run
    ckpt = load_checkpoint(run / "checkpoint.pt")
    model, cfg = model_from_checkpoint(ckpt, "checkpoint.pt")
    labels, logits = predict_logits(model, Dataset(small_data).split("test"), batch_size=1000)
    assert summary["test"]["auc"] == pytest.approx(roc_auc_score(labels, logits), abs=1e-12)
    assert summary["test"]["auc"] > 0.6  # 12 steps already learn something
    again = evaluate(model, Dataset(small_data).split("test"), 4096, cfg.max_index_range)
    for key in ("auc", "log_loss", "accuracy"):
        assert again[key] == pytest.approx(summary["test"][key], rel=1e-6), key


def test_target_auc_stops_early(small_data, small_meta, tmp_path):
    cfg = replace(SHORT, max_steps=40, eval_every=1, target_auc=0.5000001)
    summary = train(small_data, tmp_path / "run", _tiny(small_meta), cfg, progress=False)
    assert summary["stopped_early"] is True
    assert summary["steps"] < 40
    assert summary["val"]["auc"] >= 0.5000001


def test_bf16_training_runs(small_data, small_meta, tmp_path):
    summary = train(small_data, tmp_path / "run", _tiny(small_meta), replace(SHORT, max_steps=2, bf16=True),
                    progress=False)
    assert summary["steps"] == 2 and math.isfinite(summary["test"]["log_loss"])


def test_model_smaller_than_dataset_tables_is_refused(small_data, small_meta, tmp_path):
    sizes = list(small_meta["table_sizes"])
    sizes[2] -= 1
    with pytest.raises(ConfigError, match="table 2"):
        train(small_data, tmp_path / "run", preset("tiny", tuple(sizes)), SHORT, progress=False)
    # with a max index range, the tables must hold min(dataset rows, range) rows
    big = max(small_meta["table_sizes"])
    capped = replace(preset("tiny", tuple(sizes)), max_index_range=big)
    with pytest.raises(ConfigError, match=f"table 2 has {sizes[2]} rows but dataset .* needs {sizes[2] + 1}"):
        train(small_data, tmp_path / "run", capped, SHORT, progress=False)


# --- checkpoints -------------------------------------------------------------------------------

CKPT_CFG = ModelConfig((7, 3, 5), 4, (13, 8, 4), (6, 1))


def _eval_inputs():
    g = torch.Generator().manual_seed(0)
    dense = torch.randn(16, 13, generator=g)
    idx = torch.stack([torch.randint(0, n, (16,), generator=g) for n in CKPT_CFG.table_sizes], 1)
    return dense, idx


@pytest.fixture
def saved(tmp_path):
    model = build_model(CKPT_CFG, seed=4)
    path = save_checkpoint(tmp_path / "ck.pt", model, CKPT_CFG, train_state={"step": 3}, extra={"x": 1})
    return path, model


def test_checkpoint_round_trip_predictions(saved):
    path, model = saved
    ckpt = load_checkpoint(path)
    assert ckpt["train_state"] == {"step": 3} and ckpt["extra"] == {"x": 1}
    loaded, cfg = model_from_checkpoint(ckpt, str(path))
    assert cfg == CKPT_CFG
    dense, idx = _eval_inputs()
    with torch.no_grad():
        assert torch.equal(loaded(dense, idx), model(dense, idx))
    assert not list(path.parent.glob(".ck.pt.tmp*"))  # atomic write left no temporary file


def test_checkpoint_of_a_trained_run_round_trips(short_run, small_data):
    run, summary = short_run
    ckpt = load_checkpoint(run / "checkpoint.pt")
    model, cfg = model_from_checkpoint(ckpt)
    split = Dataset(small_data).split("test")
    m = evaluate(model, split, 16384, cfg.max_index_range)
    assert m["auc"] == summary["test"]["auc"]
    assert m["log_loss"] == summary["test"]["log_loss"]


def test_truncated_checkpoint(saved):
    path, _ = saved
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert str(path) in str(e.value)


def test_missing_and_foreign_checkpoints(tmp_path, saved):
    with pytest.raises(CheckpointError, match="no such"):
        load_checkpoint(tmp_path / "absent.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a dlrmkit checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    path, _ = saved
    ckpt = torch.load(path, weights_only=True)
    ckpt["format_version"] = 99
    torch.save(ckpt, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="format_version"):
        load_checkpoint(tmp_path / "future.pt")


def _resaved(path, tmp_path, edit) -> dict:
    ckpt = torch.load(path, weights_only=True)
    edit(ckpt)
    torch.save(ckpt, tmp_path / "edited.pt")
    return load_checkpoint(tmp_path / "edited.pt")


def test_checkpoint_with_other_table_sizes_names_the_tensor(saved, tmp_path):
    path, _ = saved

    def edit(c):
        c["model_config"]["table_sizes"] = [8, 3, 5]

    with pytest.raises(CheckpointError) as e:
        model_from_checkpoint(_resaved(path, tmp_path, edit), "edited.pt")
    assert "embeddings.weight" in str(e.value) and "edited.pt" in str(e.value)
    assert "(15, 4)" in str(e.value) and "(16, 4)" in str(e.value)


def test_checkpoint_with_other_embedding_dim_names_the_tensors(saved, tmp_path):
    path, _ = saved

    def edit(c):
        c["model_config"]["embedding_dim"] = 6
        c["model_config"]["bottom_mlp"] = [13, 8, 6]  # keeps the config valid for dot

    with pytest.raises(CheckpointError) as e:
        model_from_checkpoint(_resaved(path, tmp_path, edit), "edited.pt")
    msg = str(e.value)
    assert "embeddings.weight" in msg and "bottom.2.weight" in msg


def test_checkpoint_missing_tensor_is_named(saved, tmp_path):
    path, _ = saved
    with pytest.raises(CheckpointError, match="missing top.0.bias"):
        model_from_checkpoint(_resaved(path, tmp_path, lambda c: c["model_state"].pop("top.0.bias")), "edited.pt")


def test_checkpoint_with_invalid_model_config_raises_checkpoint_error(saved, tmp_path):
    """model_from_checkpoint documents CheckpointError for a missing or invalid model_config."""
    path, _ = saved

    def edit(c):
        c["model_config"]["embedding_dim"] = 6  # dot needs the bottom MLP to end in 6: invalid

    ckpt = _resaved(path, tmp_path, edit)
    with pytest.raises(CheckpointError) as e:
        model_from_checkpoint(ckpt, "edited.pt")
    assert "edited.pt" in str(e.value)
    with pytest.raises(CheckpointError):
        model_from_checkpoint({k: v for k, v in ckpt.items() if k != "model_config"}, "edited.pt")
