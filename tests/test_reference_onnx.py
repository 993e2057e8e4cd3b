"""ONNX models exported by the DLRM reference (``dlrm_s_pytorch.py --save-onnx``): read as
checkpoints, and run as they are by the onnxruntime backend.

The files in tests/fixtures/reference_onnx were written by the reference itself (its
make_fixture.py, random weights and rows); expected.npz holds the reference's own PyTorch
predictions on one-hot inputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="the onnx extra (onnx, onnxruntime) is not installed")
onnx = pytest.importorskip("onnx", reason="the onnx extra (onnx, onnxruntime) is not installed")

from dlrmkit.cli import main  # noqa: E402
from dlrmkit.config import preset  # noqa: E402
from dlrmkit.errors import CheckpointError, ConfigError  # noqa: E402
from dlrmkit.infer.onnx_backend import OnnxPredictor  # noqa: E402
from dlrmkit.infer.onnx_export import export_onnx  # noqa: E402
from dlrmkit.infer.quantize import load_for_inference  # noqa: E402
from dlrmkit.model import build_model  # noqa: E402
from dlrmkit.reference_checkpoint import load_any_model  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "reference_onnx"
EXPORTS = {"criteo": FIXTURES / "dlrm_s_pytorch_criteo.onnx",  # inputs dense_x, offsets, indices (F, B)
           "random": FIXTURES / "dlrm_s_pytorch_random.onnx"}  # dense_x, offsets, indices_0..2
EXPECTED = np.load(FIXTURES / "expected.npz")


def _inputs(run):
    return EXPECTED[f"{run}_dense"], EXPECTED[f"{run}_sparse"], EXPECTED[f"{run}_pred"]


@pytest.mark.parametrize("run", sorted(EXPORTS))
def test_reference_onnx_weights_give_the_reference_predictions(run):
    dense, sparse, pred = _inputs(run)
    model, cfg, kind = load_any_model(EXPORTS[run])
    assert kind == "reference-onnx"
    assert len(cfg.table_sizes) == sparse.shape[1] and cfg.num_dense == dense.shape[1]
    assert (cfg.interaction, cfg.interaction_self) == ("dot", False)
    with torch.inference_mode():
        got = torch.sigmoid(model(torch.from_numpy(dense), torch.from_numpy(sparse))).numpy()
    np.testing.assert_allclose(got, pred, rtol=0, atol=1e-6)
    # the inference loader (bench, quantize) reads it the same way
    model, _, precision, kind, source = load_for_inference(EXPORTS[run])
    assert kind == "reference-onnx" and precision.is_fp32 and source == str(EXPORTS[run])


@pytest.mark.parametrize("chunk", [None, 10])
@pytest.mark.parametrize("run", sorted(EXPORTS))
def test_onnxruntime_runs_the_reference_export_as_it_is(run, chunk):
    dense, sparse, pred = _inputs(run)
    predict = OnnxPredictor(EXPORTS[run], threads=1, max_pairs_per_call=chunk)
    assert predict.name.startswith("onnxruntime reference-export")
    np.testing.assert_allclose(predict(dense, sparse), pred, rtol=0, atol=1e-6)


def test_reference_onnx_with_external_data(tmp_path):
    """Models over 2 GB keep their weights in separate files; those are memory-mapped."""
    dense, sparse, pred = _inputs("criteo")
    model = onnx.load(str(EXPORTS["criteo"]))
    path = tmp_path / "big.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="big.weights", size_threshold=0)
    assert (tmp_path / "big.weights").stat().st_size > 0
    loaded, _, _ = load_any_model(path)
    with torch.inference_mode():
        got = torch.sigmoid(loaded(torch.from_numpy(dense), torch.from_numpy(sparse))).numpy()
    np.testing.assert_allclose(got, pred, rtol=0, atol=1e-6)
    np.testing.assert_allclose(OnnxPredictor(path, threads=1)(dense, sparse), pred, rtol=0, atol=1e-6)
    weights = (tmp_path / "big.weights").read_bytes()
    (tmp_path / "big.weights").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(CheckpointError, match="big.weights.*missing or cut short"):
        load_any_model(path)


def test_onnx_files_that_are_not_reference_exports(tmp_path):
    cfg = preset("tiny", (7, 9, 11))
    ours = export_onnx(build_model(cfg, seed=0), tmp_path / "ours.onnx", cfg.num_dense)
    with pytest.raises(CheckpointError, match=r"ours.onnx: an ONNX model without the DLRM reference's .*--save-onnx"):
        load_any_model(ours)
    (tmp_path / "cut.onnx").write_bytes(EXPORTS["criteo"].read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="cut.onnx: cannot be read as an ONNX model"):
        load_any_model(tmp_path / "cut.onnx")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_onnx_inputs_of_another_model_are_refused(tmp_path):
    path = tmp_path / "other.onnx"
    torch.onnx.export(torch.nn.Linear(3, 1), (torch.zeros(2, 3),), str(path), input_names=["x"], dynamo=False)
    with pytest.raises(ConfigError, match=r"other.onnx: ONNX inputs \['x'\] are neither"):
        OnnxPredictor(path)


def test_onnxruntime_devices():
    import onnxruntime as ort

    with pytest.raises(ConfigError, match="cpu or cuda"):
        OnnxPredictor(EXPORTS["random"], device="mps")
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this ONNX Runtime has CUDA (tests/test_gpu.py runs it)")
    with pytest.raises(ConfigError, match="no CUDAExecutionProvider.*onnxruntime-gpu"):
        OnnxPredictor(EXPORTS["random"], device="cuda")


@pytest.fixture(scope="module")
def criteo_fixture_data(tmp_path_factory):
    """A dataset whose tables fit the criteo export (random rows, imported as the reference's
    processed Kaggle npz)."""
    root = tmp_path_factory.mktemp("reference_onnx")
    sizes = load_any_model(EXPORTS["criteo"])[1].table_sizes
    rng = np.random.default_rng(5)
    rows = 7 * 300
    np.savez(root / "processed.npz", X_int=rng.integers(0, 200, (rows, 13)).astype(np.int32),
             X_cat=(rng.random((rows, 26)) * np.array(sizes)).astype(np.int32),
             y=rng.integers(0, 2, rows).astype(np.int32), counts=np.array(sizes, dtype=np.int32))
    assert main(["import", "--format", "kaggle-npz", "--input", str(root / "processed.npz"),
                 "--out", str(root / "data"), "--quiet"]) == 0
    return root / "data"


def test_cli_evaluate_and_bench_a_reference_onnx_model(criteo_fixture_data, tmp_path, capsys):
    data, model_path = criteo_fixture_data, EXPORTS["criteo"]
    assert main(["evaluate", "--checkpoint", str(model_path), "--data", str(data), "--out", str(tmp_path / "e.json")]) == 0
    evaluated = json.loads((tmp_path / "e.json").read_text())
    assert evaluated["checkpoint_format"] == "reference-onnx" and evaluated["rows"] == 150
    out = tmp_path / "bench"
    rc = main(["bench", "--model-path", str(model_path), "--data", str(data), "--output", str(out), "--quiet",
               "--backend", "onnxruntime", "--accuracy", "--samples-to-aggregate-fix", "5"])
    assert rc == 0, capsys.readouterr().err
    result = json.loads((out / "result.json").read_text())
    assert result["checkpoint_format"] == "reference-onnx" and result["device"].startswith("cpu (")
    assert result["sut"]["backend"].startswith("onnxruntime reference-export")
    assert not (out / "model.onnx").exists()  # the user's file ran, not an export of ours
    # ONNX Runtime on the reference's graph against eager PyTorch on its weights, same pairs
    assert result["roc_auc"] == pytest.approx(result["reference_auc"], abs=2e-6)
    assert result["roc_auc"] == pytest.approx(evaluated["auc"], abs=2e-6)  # every test row
