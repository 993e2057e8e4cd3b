"""Rows placed by access frequency: the reordered model with remapped inputs predicts exactly what
the original does; counts come from preprocessing's files or the train split."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from dlrmkit.bench.qsl import SampleLibrary
from dlrmkit.checkpoint import save_checkpoint
from dlrmkit.cli import main
from dlrmkit.config import PreprocessConfig, Precision, SynthConfig, preset
from dlrmkit.data import synth
from dlrmkit.data.dataset import Dataset
from dlrmkit.data.preprocess import preprocess
from dlrmkit.infer import TorchPredictor
from dlrmkit.infer.placement import (frequency_order, inverse, place_by_frequency, remap_indices, reorder_rows,
                                     row_counts)
from dlrmkit.infer.quantize import load_for_inference, quantize_model, save_inference_checkpoint
from dlrmkit.model import build_model


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    out = tmp_path_factory.mktemp("placement") / "data"
    synth.write_binary(SynthConfig(rows=40_000, cardinality_scale=0.001, workers=1), out, progress=False)
    return Dataset(out)


@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory):
    root = tmp_path_factory.mktemp("placement_raw")
    synth.write_raw(SynthConfig(rows=30_000, cardinality_scale=0.001, workers=1), root / "raw", progress=False)
    out = root / "data"
    preprocess(PreprocessConfig(dataset="kaggle", inputs=(str(root / "raw" / "train.txt"),), vocab="frequency",
                                workers=1), out, progress=False)
    return Dataset(out)


def test_frequency_order_puts_the_hottest_rows_first_and_keeps_ties_in_order():
    counts = np.array([3, 0, 7, 3, 1])
    order = frequency_order(counts)
    assert order.tolist() == [2, 0, 3, 4, 1]
    remap = inverse(order)
    assert remap.dtype == np.int32 and remap[order].tolist() == list(range(5))


def test_frequency_order_within_tables_keeps_tables_contiguous():
    counts = np.array([1, 5, 5, 0, 9, 2])  # tables of 2, 3 and 1 rows
    order = frequency_order(counts, (2, 3, 1))
    assert order.tolist() == [1, 0, 4, 2, 3, 5]


def test_row_counts_from_the_train_split(binary):
    sizes = binary.table_sizes
    counts = row_counts(binary, sizes)
    sparse = np.asarray(binary.split("train").sparse)
    start = 0
    for j, size in enumerate(sizes):
        np.testing.assert_array_equal(counts[start:start + size], np.bincount(sparse[:, j], minlength=size))
        start += size
    assert counts.sum() == sparse.size


def test_row_counts_from_preprocessing_files_equal_counting_the_train_split(preprocessed):
    assert (preprocessed.path / "counts").is_dir()
    sizes = preprocessed.table_sizes
    counts = row_counts(preprocessed, sizes)
    sparse = np.asarray(preprocessed.split("train").sparse)
    start = 0
    for j, size in enumerate(sizes):
        np.testing.assert_array_equal(counts[start:start + size], np.bincount(sparse[:, j], minlength=size), err_msg=j)
        start += size


@pytest.mark.parametrize("precision", [Precision(), Precision("int8-rowwise", "fp32"), Precision("int8-table", "bf16")])
def test_placed_model_predicts_exactly_what_the_original_does(binary, precision):
    cfg = preset("tiny", binary.table_sizes)
    model = build_model(cfg, seed=0, sparse_grad=False)
    original = TorchPredictor(quantize_model(copy.deepcopy(model), precision), precision=precision)
    placed_model = copy.deepcopy(model)
    place_by_frequency(placed_model, binary)
    placed = TorchPredictor(quantize_model(placed_model, precision), precision=precision)
    test = binary.split("test")
    dense, sparse = np.array(test.dense[:3000]), np.array(test.sparse[:3000])
    assert placed.prepare is not None and original.prepare is None
    np.testing.assert_array_equal(placed(dense, placed.prepare(sparse)), original(dense, sparse))
    # each table's hottest row is the first of its table in the placed layout
    counts = row_counts(binary, binary.table_sizes)
    starts = np.concatenate([[0], np.cumsum(binary.table_sizes)[:-1]])
    hottest = [int(np.argmax(counts[a:a + n])) for a, n in zip(starts, binary.table_sizes)]
    remapped = placed.prepare(np.array([hottest], dtype=np.int32))
    np.testing.assert_array_equal(remapped[0], starts)


def test_placement_applies_max_index_range_before_remapping():
    cfg = preset("tiny", (10,) * 26)
    order = np.arange(260)[::-1].copy()
    remap = inverse(order)
    sparse = np.full((2, 26), 13, dtype=np.int32)  # 13 mod 10 = 3
    rows = remap_indices(sparse, remap, cfg.table_sizes, max_index_range=10)
    assert rows[0].tolist() == [259 - (10 * j + 3) for j in range(26)]


def test_reordering_twice_is_refused(binary):
    model = build_model(preset("tiny", binary.table_sizes), seed=0)
    place_by_frequency(model, binary)
    with pytest.raises(ValueError, match="already"):
        reorder_rows(model, np.arange(sum(binary.table_sizes)))


def test_qsl_prepares_sparse_features_when_loading(binary):
    test = binary.split("test")
    offsets = np.arange(0, 101, 10)
    qsl = SampleLibrary(test, offsets, prepare=lambda sparse: sparse + 1000)
    qsl.load([3, 1])
    _, sparse, _, _ = qsl.gather(np.array([1, 3]))
    np.testing.assert_array_equal(sparse, np.concatenate([test.sparse[10:20], test.sparse[30:40]]) + 1000)


def test_placed_inference_checkpoint_round_trips(binary, tmp_path):
    cfg = preset("tiny", binary.table_sizes)
    model = build_model(cfg, seed=0, sparse_grad=False)
    place_by_frequency(model, binary)
    precision = Precision("int8-rowwise", "bf16")
    quantize_model(model, precision)
    path = save_inference_checkpoint(tmp_path / "q.pt", model, cfg, precision)
    loaded, _, loaded_precision, kind, _ = load_for_inference(path)
    assert kind == "inference" and loaded_precision == precision
    a, b = TorchPredictor(model, precision=precision), TorchPredictor(loaded, precision=precision)
    test = binary.split("test")
    dense, sparse = np.array(test.dense[:500]), np.array(test.sparse[:500])
    np.testing.assert_array_equal(a(dense, a.prepare(sparse)), b(dense, b.prepare(sparse)))


def test_cli_placement_keeps_the_auc(binary, tmp_path, capsys):
    cfg = preset("tiny", binary.table_sizes)
    checkpoint = save_checkpoint(tmp_path / "tiny.pt", build_model(cfg, seed=0), cfg)
    common = ["--data", str(binary.path), "--accuracy", "--count-samples", "10", "--quiet",
              "--embeddings", "fp32", "--mlp", "fp32"]
    assert main(["bench", "--checkpoint", str(checkpoint), "--output", str(tmp_path / "file"), *common]) == 0
    assert main(["bench", "--checkpoint", str(checkpoint), "--output", str(tmp_path / "freq"), *common,
                 "--placement", "frequency"]) == 0
    plain = json.loads((tmp_path / "file" / "result.json").read_text())
    placed = json.loads((tmp_path / "freq" / "result.json").read_text())
    assert placed["placement"] == "frequency" and plain["placement"] == "file"
    assert placed["roc_auc"] == plain["roc_auc"]
    # a quantized, placed checkpoint from `quantize`, benchmarked as is
    assert main(["quantize", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "q.pt"),
                 "--placement", "frequency", "--data", str(binary.path), "--embeddings", "int8-rowwise",
                 "--mlp", "fp32"]) == 0
    assert main(["bench", "--checkpoint", str(tmp_path / "q.pt"), "--output", str(tmp_path / "q"),
                 "--data", str(binary.path), "--accuracy", "--count-samples", "10", "--quiet"]) == 0
    quantized = json.loads((tmp_path / "q" / "result.json").read_text())
    assert quantized["placement"] == "frequency" and quantized["reference_auc"] == pytest.approx(plain["roc_auc"], abs=1e-12)
    assert abs(quantized["roc_auc"] - plain["roc_auc"]) < 0.01
    capsys.readouterr()
    assert main(["quantize", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "r.pt"),
                 "--placement", "frequency"]) == 1
    assert "--data" in capsys.readouterr().err


def test_frequency_order_with_a_hot_block_puts_the_hottest_rows_of_all_tables_first():
    counts = np.array([1, 5, 5, 0, 9, 2])  # tables of 2, 3 and 1 rows
    order = frequency_order(counts, (2, 3, 1), hot_rows=3)
    # hot block: the 3 hottest rows (9, 5, 5) table by table; then the cold rows table by table
    assert order.tolist() == [1, 4, 2, 0, 3, 5]


@pytest.mark.parametrize("precision", [Precision(), Precision("int8-rowwise", "fp32"), Precision("int8-table", "bf16")])
@pytest.mark.parametrize("hot_fraction", [0.01, 0.3, 1.0])
def test_tiered_tables_predict_exactly_what_the_original_does(binary, precision, hot_fraction):
    from dlrmkit.infer.placement import place_in_tiers
    from dlrmkit.infer.quantize import embedding_bytes

    model = build_model(preset("tiny", binary.table_sizes), seed=0, sparse_grad=False)
    original = quantize_model(copy.deepcopy(model), precision)
    tiered = quantize_model(copy.deepcopy(model), precision)
    place_in_tiers(tiered, binary, hot_fraction)
    test = binary.split("test")
    dense, sparse = np.array(test.dense[:2000]), np.array(test.sparse[:2000])
    a = TorchPredictor(original, precision=precision)
    b = TorchPredictor(tiered, precision=precision)
    np.testing.assert_array_equal(b(dense, b.prepare(sparse)), a(dense, sparse))
    tiers = tiered.embeddings.memory_bytes()
    rows = sum(binary.table_sizes)
    assert tiered.embeddings.hot_rows == max(1, round(hot_fraction * rows))
    assert tiers["hot"] + tiers["cold"] == embedding_bytes(original) == embedding_bytes(tiered)
    # the hot tier holds the most looked-up rows: it serves at least its share of the lookups
    share = (b.prepare(sparse) < tiered.embeddings.hot_rows).mean()
    assert share >= hot_fraction - 1e-9


def test_tiers_need_placed_rows_and_one_hot_inputs(binary):
    import torch

    from dlrmkit.model.tiered import TieredEmbeddingTables

    model = build_model(preset("tiny", binary.table_sizes), seed=0, sparse_grad=False)
    with pytest.raises(ValueError, match="placed"):
        TieredEmbeddingTables(model.embeddings, 10)
    place_by_frequency(model, binary)
    with pytest.raises(ValueError, match="hot_rows"):
        TieredEmbeddingTables(model.embeddings, 0)
    tiers = TieredEmbeddingTables(model.embeddings, 10)
    with pytest.raises(NotImplementedError):
        tiers(torch.zeros(4, dtype=torch.int64), torch.arange(0, 4))
    tiers.to("meta")  # as to a GPU: only the hot tier moves; the cold rows and the remap stay on the host
    assert tiers.hot.device.type == "meta"
    assert tiers.cold.device.type == tiers.row_remap.device.type == "cpu"


def test_cli_hot_fraction(binary, tmp_path, capsys):
    cfg = preset("tiny", binary.table_sizes)
    checkpoint = save_checkpoint(tmp_path / "tiny.pt", build_model(cfg, seed=0), cfg)
    common = ["bench", "--checkpoint", str(checkpoint), "--data", str(binary.path), "--accuracy",
              "--count-samples", "10", "--quiet", "--embeddings", "int8-rowwise", "--mlp", "fp32"]
    assert main([*common, "--output", str(tmp_path / "plain")]) == 0
    assert main([*common, "--output", str(tmp_path / "tiers"), "--placement", "frequency", "--hot-fraction", "0.1"]) == 0
    plain = json.loads((tmp_path / "plain" / "result.json").read_text())
    tiers = json.loads((tmp_path / "tiers" / "result.json").read_text())
    assert tiers["hot_fraction"] == 0.1 and tiers["roc_auc"] == plain["roc_auc"]
    capsys.readouterr()
    assert main([*common, "--output", str(tmp_path / "bad"), "--hot-fraction", "0.1"]) == 1
    assert "--placement frequency" in capsys.readouterr().err
    assert main([*common, "--output", str(tmp_path / "bad"), "--placement", "frequency", "--hot-fraction", "1.5"]) == 1
    assert "(0, 1]" in capsys.readouterr().err
