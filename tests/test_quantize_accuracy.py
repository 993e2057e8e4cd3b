"""Int8 and reduced-precision models: the embedding layer within its derived bound, int8 tables equal
to their dequantized FP32 tables, and the AUC of every precision (synthetic data and the real rows
through the DLRM reference's checkpoint) against the 99% / 99.9% targets. The primitives and the
int8 table module: tests/test_quantize.py.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from quantize_cases import SMALL_KAGGLE, assert_within, quantize_rounding, random_inputs as _inputs
from dlrmkit.config import PRECISION_FOR_CONFIG_VER, ModelConfig, Precision, SynthConfig, TrainConfig, preset
from dlrmkit.data import synth
from dlrmkit.data.dataset import Dataset
from dlrmkit.infer import TorchPredictor
from dlrmkit.infer.quantize import embedding_bytes, load_for_inference, quantize_model
from dlrmkit.metrics import roc_auc
from dlrmkit.model import build_model
from dlrmkit.model.embedding import EmbeddingTables
from dlrmkit.model.quantized import QuantizedEmbeddingTables, dequantize, unpack



# --- quantized models -------------------------------------------------------------------------

MODELS = {"tiny": preset("tiny", SMALL_KAGGLE), "kaggle": preset("kaggle", SMALL_KAGGLE)}
INT8_TABLES = ["int8-rowwise", "int8-table"]


def _multi_hot(indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The same lookups as bags: table-major flat indices, each bag its one-hot row plus row 0."""
    batch, num_tables = indices.shape
    flat = torch.stack([indices.t(), torch.zeros_like(indices.t())], dim=2).reshape(-1)  # (F*B*2,)
    return flat, torch.arange(num_tables * batch) * 2


@pytest.mark.parametrize("arch", sorted(MODELS))
@pytest.mark.parametrize("embeddings", INT8_TABLES)
def test_quantized_model_embedding_layer_bound(arch, embeddings):
    cfg = MODELS[arch]
    fp32 = build_model(cfg, seed=1).eval()
    model = quantize_model(copy.deepcopy(fp32), Precision(embeddings, "fp32"))
    assert isinstance(model.embeddings, QuantizedEmbeddingTables) and not model.training
    assert model.embeddings.scheme == embeddings.removeprefix("int8-")
    _, indices = _inputs(cfg, 64, seed=2)
    with torch.no_grad():
        got, want = model.embeddings(indices).double(), fp32.embeddings(indices).double()  # (B, F, D)
    rows = indices + fp32.embeddings.row_offsets
    steps = unpack(model.embeddings.packed)[1].double()[rows][..., None].expand_as(want)
    assert_within(got, want, steps / 2 + quantize_rounding(steps, want), "int8 tables vs FP32 tables")
    # the MLPs are left alone
    for name in ("bottom", "top"):
        ours, theirs = getattr(model, name).state_dict(), getattr(fp32, name).state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), name


@pytest.mark.parametrize("arch", sorted(MODELS))
@pytest.mark.parametrize("embeddings", INT8_TABLES)
def test_int8_tables_equal_dequantized_fp32_tables_in_the_model(arch, embeddings):
    """The kernel in isolation: the same network with FP32 tables holding the dequantized rows.
    The pooled vectors then differ by float32 rounding only (a few ulps, bounded above), which the
    MLPs turn into logit differences far below 1e-5 for logits of order 1."""
    cfg = MODELS[arch]
    model = quantize_model(build_model(cfg, seed=3), Precision(embeddings, "fp32"))
    same = build_model(cfg, seed=3).eval()
    with torch.no_grad():
        same.embeddings.weight.copy_(dequantize(model.embeddings.packed))
    dense, indices = _inputs(cfg, 256, seed=4)
    flat, offsets = _multi_hot(indices)
    with torch.no_grad():
        logits = model(dense, indices)
        assert logits.shape == (256,) and float(logits.abs().max()) < 100
        torch.testing.assert_close(logits, same(dense, indices), rtol=0, atol=1e-5)
        torch.testing.assert_close(model(dense, flat, offsets), same(dense, flat, offsets), rtol=0, atol=1e-5)


def test_quantize_model_mlp_precisions_and_table_bytes():
    cfg = MODELS["tiny"]
    rows, dim = sum(cfg.table_sizes), cfg.embedding_dim
    fp32 = build_model(cfg, seed=0)
    assert embedding_bytes(fp32) == rows * dim * 4
    same = quantize_model(fp32, Precision())
    assert same is fp32 and isinstance(same.embeddings, EmbeddingTables) and not same.training
    bf16 = quantize_model(build_model(cfg, seed=0), Precision("int8-table", "bf16"))
    assert embedding_bytes(bf16) == rows * (dim + 8)  # bf16 is autocast at run time: weights stay FP32
    assert all(p.dtype == torch.float32 for p in bf16.parameters())
    int8 = quantize_model(build_model(cfg, seed=0), Precision("fp32", "int8"))
    assert isinstance(int8.embeddings, EmbeddingTables)
    linears = [m for m in int8.modules() if type(m).__name__ == "Linear"]
    assert linears and all(type(m).__module__.startswith("torch.ao.nn.quantized.dynamic") for m in linears)
    # bench quantizes a loaded inference model again: that must change nothing
    dense, indices = _inputs(cfg, 32, seed=1)
    with torch.no_grad():
        before = int8(dense, indices)
        assert torch.equal(quantize_model(int8, Precision("fp32", "int8"))(dense, indices), before)


# --- AUC of each precision on synthetic data ---------------------------------------------------

ALL_PRECISIONS = [Precision(e, m) for e in ("fp32", "int8-rowwise", "int8-table") for m in ("fp32", "bf16", "int8")]


def _auc(model, cfg: ModelConfig, precision: Precision, dense: np.ndarray, sparse: np.ndarray,
         labels: np.ndarray) -> float:
    """AUC of ``model`` in ``precision`` as the benchmark runs it (TorchPredictor: bf16 by autocast)."""
    quantized = quantize_model(copy.deepcopy(model), precision)
    probs = TorchPredictor(quantized, cfg.max_index_range, precision=precision)(dense, sparse)
    return roc_auc(labels, probs.astype(np.float64))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny DLRM trained briefly (400 steps of 1024, ~4 s on one thread) on 100k synthetic rows,
    and its test split (~7k pairs)."""
    from dlrmkit.checkpoint import load_checkpoint, model_from_checkpoint
    from dlrmkit.train.loop import train

    root = tmp_path_factory.mktemp("quantize_auc")
    synth.write_binary(SynthConfig(rows=100_000, seed=7, cardinality_scale=0.001, workers=1), root / "data",
                       progress=False)
    dataset = Dataset(root / "data")
    cfg = preset("tiny", dataset.table_sizes)
    train(root / "data", root / "run", cfg, TrainConfig(optimizer="adagrad", learning_rate=0.05, batch_size=1024,
                                                        max_steps=400, threads=1, eval_max_rows=1000),
          progress=False)
    model, _ = model_from_checkpoint(load_checkpoint(root / "run" / "checkpoint.pt"))
    test = dataset.split("test")
    arrays = (np.array(test.dense), np.array(test.sparse), np.asarray(test.label, dtype=np.float64))
    fp32_auc = _auc(model, cfg, Precision(), *arrays)
    assert fp32_auc > 0.65, f"the model did not learn (test AUC {fp32_auc:.4f}): the ratios below would mean little"
    return model, cfg, arrays, fp32_auc


@pytest.mark.parametrize("precision", ALL_PRECISIONS, ids=lambda p: f"{p.embeddings}-{p.mlp}")
def test_every_precision_keeps_99_percent_of_fp32_auc(trained, precision):
    model, cfg, arrays, fp32_auc = trained
    auc = _auc(model, cfg, precision, *arrays)
    assert auc >= 0.99 * fp32_auc, f"{precision}: AUC {auc:.5f}, FP32 {fp32_auc:.5f}"
    if precision.is_fp32:
        assert auc == fp32_auc


# --- AUC on real Criteo rows: the DLRM reference's checkpoint ----------------------------------

SHARED = Path(__file__).resolve().parents[2] / "shared"
FB = SHARED / "reference_models" / "fb_kaggle_real"
FB_CHECKPOINT = FB / "fb_kaggle_real.pt"
FB_NPZ = FB / "fb_processed" / "kaggleAdDisplayChallenge_processed.npz"
FB_DAYS = FB / "fb_processed" / "train_day_count.npz"
REFERENCE_TEST_AUC = 0.688054  # README.md there: the reference's own predictions on its 722 test rows


@pytest.fixture(scope="module")
def real_rows():
    """The reference checkpoint and its test split (the reference's arrays: log(x + 1) as it
    computes it, its dictionary indices; test = the first ceil(m/2) rows of the last 'day')."""
    missing = [str(p) for p in (FB_CHECKPOINT, FB_NPZ, FB_DAYS) if not p.exists()]
    if missing:
        pytest.skip(f"../shared/reference_models/fb_kaggle_real not present (real Criteo rows are not in the "
                    f"repository, licence); missing {missing}")
    model, cfg, precision, kind, _ = load_for_inference(FB_CHECKPOINT)
    assert kind == "reference" and precision == Precision()
    with np.load(FB_DAYS) as z:
        days = [int(d) for d in z[z.files[0]]]
    start = sum(days[:-1])
    rows = slice(start, start + (days[-1] + 1) // 2)
    with np.load(FB_NPZ) as z:
        dense = torch.log(torch.tensor(z["X_int"][rows], dtype=torch.float) + 1).numpy()
        sparse, labels = z["X_cat"][rows].astype(np.int64), z["y"][rows].astype(np.float64)
    fp32_auc = _auc(model, cfg, Precision(), dense, sparse, labels)
    assert labels.shape == (722,)
    assert fp32_auc == pytest.approx(REFERENCE_TEST_AUC, abs=1e-6)  # the right rows, the right model
    return model, cfg, (dense, sparse, labels), fp32_auc


@pytest.mark.parametrize("data", ["trained", "real_rows"])  # synthetic data; the reference's checkpoint
@pytest.mark.parametrize("config_ver, target", [("default", 0.99), ("high_accuracy", 0.999)])
def test_config_version_precision_meets_its_target(request, data, config_ver, target):
    model, cfg, arrays, fp32_auc = request.getfixturevalue(data)
    precision = PRECISION_FOR_CONFIG_VER[config_ver]
    auc = _auc(model, cfg, precision, *arrays)
    assert auc >= target * fp32_auc, f"{data}, {config_ver} ({precision}): AUC {auc:.6f}, FP32 {fp32_auc:.6f}"


# --- int8 MLPs with calibrated (static) activation scales -------------------------------------


def _calibration(dense: np.ndarray, sparse: np.ndarray, rows: int = 2048, batch: int = 512):
    for lo in range(0, rows, batch):
        yield torch.from_numpy(dense[lo:lo + batch]), torch.from_numpy(sparse[lo:lo + batch].astype(np.int64))


@pytest.mark.parametrize("embeddings", ["fp32", "int8-rowwise"])
def test_static_int8_mlps_keep_99_percent_of_fp32_auc(trained, embeddings):
    model, cfg, (dense, sparse, labels), fp32_auc = trained
    precision = Precision(embeddings, "int8-static")
    quantized = quantize_model(copy.deepcopy(model), precision, calibration=_calibration(dense, sparse))
    probs = TorchPredictor(quantized, cfg.max_index_range, precision=precision)(dense, sparse)
    auc = roc_auc(labels, probs.astype(np.float64))
    assert auc != fp32_auc and auc >= 0.99 * fp32_auc, f"{precision}: AUC {auc:.5f}, FP32 {fp32_auc:.5f}"
    # the scales are fixed: a pair's prediction does not depend on the batch it comes in (but for
    # float32 rounding in kernels blocked by batch size)
    alone = TorchPredictor(quantized, cfg.max_index_range, precision=precision)(dense[:7], sparse[:7])
    np.testing.assert_allclose(alone, probs[:7], rtol=0, atol=1e-6)
