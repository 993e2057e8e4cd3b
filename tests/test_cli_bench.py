"""`dlrmkit bench` and `dlrmkit accuracy` end to end: result files, the accuracy tool on LoadGen's
log, one-line errors, and a DLRM-reference-format checkpoint scored against the float64 naive DLRM."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import naive_dlrm as naive
from dlrmkit.bench.accuracy import read_accuracy_log
from dlrmkit.bench.aggregation import aggregate_offsets, read_trace
from dlrmkit.checkpoint import save_checkpoint
from dlrmkit.cli import main
from dlrmkit.config import MLPERF_DLRM_REFERENCE_AUC, MLPERF_QUERY_SIZE_QUANTILE, AggregationConfig, SynthConfig, preset
from dlrmkit.data import synth
from dlrmkit.data.dataset import Dataset
from dlrmkit.metrics import roc_auc
from dlrmkit.model import build_model
from dlrmkit.train.evaluate import evaluate

FAST = ["--fast", "--duration", "300"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A synthetic dataset (~5.7k test pairs: ~21 samples of MLPerf's sizes) and a tiny checkpoint."""
    root = tmp_path_factory.mktemp("cli_bench")
    data = root / "data"
    synth.write_binary(SynthConfig(rows=80_000, cardinality_scale=0.001, workers=1), data, progress=False)
    cfg = preset("tiny", Dataset(data).table_sizes)
    model = build_model(cfg, seed=0)
    checkpoint = save_checkpoint(root / "tiny.pt", model, cfg)
    return data, checkpoint, model


FP32 = ["--embeddings", "fp32", "--mlp", "fp32"]


def _bench(setup, out: Path, *extra: str, precision: list[str] = FP32) -> int:
    """A bench run, FP32 unless told (the harness's numbers are compared with FP32 references)."""
    data, checkpoint, _ = setup
    return main(["bench", "--checkpoint", str(checkpoint), "--data", str(data), "--output", str(out),
                 *precision, *extra])


def _one_error_line(err: str, command: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"dlrmkit {command}: error:"), lines[0]
    return lines[0]


def _mlperf_offsets(data: Path) -> np.ndarray:
    """The CLI's default aggregation: MLPerf's quantile distribution, --numpy-rand-seed 123."""
    pairs = Dataset(data).splits["test"]
    return aggregate_offsets(pairs, AggregationConfig(quantile=MLPERF_QUERY_SIZE_QUANTILE, seed=123))


def test_bench_performance(setup, tmp_path, capsys):
    """Without precision flags the config version's precision runs (default: int8 tables, bf16 MLPs)."""
    out = tmp_path / "out"
    assert _bench(setup, out, *FAST, precision=[]) == 0
    captured = capsys.readouterr()
    result = json.loads((out / "result.json").read_text())
    assert result["scenario"] == "Offline" and result["test_mode"] == "PerformanceOnly"
    assert result["result_samples_per_second"] > 0
    assert result["checkpoint_format"] == "dlrmkit" and result["checkpoint"] == str(setup[1])
    assert result["split"] == "test" and result["sut"]["backend"] == "pytorch emb-int8-rowwise mlp-bf16"
    assert result["precision"] == {"embeddings": "int8-rowwise", "mlp": "bf16"}
    assert result["qsl"]["aggregation"]["rule"] == "quantile"
    assert result["qsl"]["aggregation"]["quantile"] == list(MLPERF_QUERY_SIZE_QUANTILE)
    offsets = _mlperf_offsets(setup[0])
    assert result["qsl"]["samples"] == len(offsets) - 1 and result["qsl"]["pairs"] == offsets[-1]
    np.testing.assert_array_equal(read_trace(out / "dlrm_trace_of_aggregated_samples.txt"), offsets)
    assert result["summary_string"] in captured.out
    assert f"wrote {out / 'result.json'}" in captured.out
    progress = captured.err.splitlines()  # progress only: samples/s as the run goes
    assert progress and all(line.startswith("LoadGen Offline: ") and "samples/s" in line for line in progress)
    assert (out / "latency_histogram.png").is_file()


def test_bench_server_quiet_no_plots(setup, tmp_path, capsys):
    out = tmp_path / "out"
    assert _bench(setup, out, *FAST, "--scenario", "Server", "--quiet", "--no-plots") == 0
    captured = capsys.readouterr()
    result = json.loads((out / "result.json").read_text())
    assert result["scenario"] == "Server" and result["result_completed_samples_per_sec"] > 0
    assert captured.out.splitlines() == [result["summary_string"], f"wrote {out / 'result.json'} and LoadGen's logs"]
    assert not list(out.glob("*.png"))


@pytest.fixture(scope="module")
def accuracy_out(setup, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli_accuracy") / "out"
    assert _bench(setup, out, *FAST, "--accuracy", "--count-samples", "20", "--quiet") == 0
    return out, json.loads((out / "result.json").read_text())


def test_bench_accuracy_then_accuracy_tool(setup, accuracy_out, tmp_path, capsys):
    out, result = accuracy_out
    assert result["test_mode"] == "AccuracyOnly" and result["qsl"]["samples"] == 20
    offsets = _mlperf_offsets(setup[0])
    assert result["qsl"]["pairs"] == offsets[20]
    data, _, model = setup
    want = evaluate(model, Dataset(data).split("test").rows(0, int(offsets[20])))["auc"]
    assert result["roc_auc"] == pytest.approx(want, abs=1e-6)

    metrics_file = tmp_path / "metrics.json"
    rc = main(["accuracy", "--mlperf-accuracy-file", str(out / "mlperf_log_accuracy.json"),
               "--output", str(metrics_file)])
    captured = capsys.readouterr()
    assert rc == 0 and captured.err == ""
    assert f"AUC={100 * result['roc_auc']:.3f}%" in captured.out
    assert f"total={result['qsl']['pairs']}" in captured.out and "queries=20" in captured.out
    metrics = json.loads(metrics_file.read_text())
    assert metrics["auc"] == pytest.approx(result["roc_auc"], abs=1e-12)
    assert metrics["total"] == result["qsl"]["pairs"] and metrics["samples"] == 20


def test_accuracy_tool_pass_and_fail(accuracy_out, capsys):
    out, result = accuracy_out
    log = str(out / "mlperf_log_accuracy.json")
    assert main(["accuracy", "--mlperf-accuracy-file", log, "--reference-auc", "0.99"]) == 1
    captured = capsys.readouterr()
    threshold = 100 * 0.99 * 0.99
    assert f"[FAILED] AUC: {100 * result['roc_auc']:.3f} (Threshold={threshold:.3f})" in captured.out

    # its own AUC as the reference: 99% of it passes, 99.9% of it too
    reference = f"{result['roc_auc']:.9f}"
    assert main(["accuracy", "--mlperf-accuracy-file", log, "--reference-auc", reference]) == 0
    assert "[PASSED]" in capsys.readouterr().out
    assert main(["accuracy", "--mlperf-accuracy-file", log, "--reference-auc", reference,
                 "--config-ver", "high_accuracy"]) == 0
    assert f"Threshold={100 * 0.999 * float(reference):.3f}" in capsys.readouterr().out


def test_accuracy_tool_on_a_log_of_predictions_only(setup, accuracy_out, tmp_path, capsys):
    """A SUT answering predictions only: labels come from the dataset and the aggregation trace,
    in LoadGen's (shuffled) sample order; the AUC must equal the packed log's."""
    out, result = accuracy_out
    entries = json.loads((out / "mlperf_log_accuracy.json").read_text())
    for entry in entries:
        packed = np.frombuffer(bytes.fromhex(entry["data"]), np.float32).reshape(-1, 2)
        entry["data"] = packed[:, 0].copy().tobytes().hex().upper()
    entries.append(dict(entries[0]))  # a sample logged twice counts once
    predictions_only = tmp_path / "predictions_only.json"
    predictions_only.write_text(json.dumps(entries))
    trace = out / "dlrm_trace_of_aggregated_samples.txt"
    rc = main(["accuracy", "--mlperf-accuracy-file", str(predictions_only), "--data", str(setup[0]),
               "--aggregation-trace-file", str(trace), "--output", str(tmp_path / "m.json")])
    assert rc == 0, capsys.readouterr().err
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["auc"] == pytest.approx(result["roc_auc"], abs=1e-12)
    assert metrics["total"] == result["qsl"]["pairs"] and metrics["samples"] == 20
    capsys.readouterr()
    # the packed log read as predictions only holds twice the values: a clear error
    assert main(["accuracy", "--mlperf-accuracy-file", str(out / "mlperf_log_accuracy.json"), "--data",
                 str(setup[0]), "--aggregation-trace-file", str(trace)]) == 1
    assert "predictions for samples holding" in _one_error_line(capsys.readouterr().err, "accuracy")
    assert main(["accuracy", "--mlperf-accuracy-file", str(predictions_only), "--data", str(setup[0])]) == 1
    assert "go together" in _one_error_line(capsys.readouterr().err, "accuracy")


def test_accuracy_tool_errors(tmp_path, capsys):
    missing = tmp_path / "none.json"
    assert main(["accuracy", "--mlperf-accuracy-file", str(missing)]) == 1
    assert str(missing) in _one_error_line(capsys.readouterr().err, "accuracy")
    bad = tmp_path / "bad.json"
    bad.write_text("[{\"qsl_idx\": 0}]")
    assert main(["accuracy", "--mlperf-accuracy-file", str(bad)]) == 1
    assert str(bad) in _one_error_line(capsys.readouterr().err, "accuracy")


@pytest.mark.parametrize("flags", [["--accuracy", "--find-peak-performance"],
                                   ["--accuracy", "--test-mode", "PerformanceOnly"]])
def test_conflicting_test_modes(setup, tmp_path, capsys, flags):
    assert _bench(setup, tmp_path / "out", *FAST, "--scenario", "Server", *flags) == 1
    captured = capsys.readouterr()
    assert "conflicting" in _one_error_line(captured.err, "bench")
    assert not (tmp_path / "out" / "result.json").exists()


def test_find_peak_performance_needs_server(setup, tmp_path, capsys):
    assert _bench(setup, tmp_path / "out", *FAST, "--find-peak-performance") == 1
    assert "Server" in _one_error_line(capsys.readouterr().err, "bench")


@pytest.mark.parametrize("device, says", [("gpu", "is not a torch device"), ("cuda:7", "cuda")])
def test_unavailable_device_is_named(setup, tmp_path, capsys, device, says):
    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    assert _bench(setup, tmp_path / "out", *FAST, "--device", device) == 1
    line = _one_error_line(capsys.readouterr().err, "bench")
    assert f"device {device!r}" in line and says in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("mlp", ["int8", "int8-static"])
def test_int8_mlps_are_refused_on_a_gpu_before_any_work(setup, tmp_path, capsys, monkeypatch, mlp):
    """PyTorch's int8 Linear layers have CPU kernels only: `--device cuda --mlp int8` stops at once
    with the way out, not in the warm-up with a kernel error (the device check is bypassed here, so
    this runs without a GPU)."""
    import dlrmkit.infer.backend as backend

    monkeypatch.setattr(backend, "torch_device", torch.device)
    monkeypatch.setattr("dlrmkit.infer.quantize.quantize_model", lambda *a, **k: pytest.fail("quantized"))
    assert _bench(setup, tmp_path / "out", *FAST, "--device", "cuda", precision=["--mlp", mlp]) == 1
    line = _one_error_line(capsys.readouterr().err, "bench")
    assert f"--mlp {mlp}" in line and "CPU only" in line and "--mlp bf16" in line and "onnxruntime" in line


def test_reference_harness_flag_names(setup, tmp_path, capsys):
    """--model-path and --use-gpu, as the MLPerf harness spells them, mean --checkpoint and --device cuda."""
    data, checkpoint, _ = setup
    base = ["bench", "--data", str(data), *FP32, *FAST, "--count-samples", "8", "--quiet", "--no-plots"]
    assert main([*base, "--model-path", str(checkpoint), "--output", str(tmp_path / "a")]) == 0
    assert json.loads((tmp_path / "a" / "result.json").read_text())["checkpoint"] == str(checkpoint)
    capsys.readouterr()
    if not torch.cuda.is_available():
        assert main([*base, "--model-path", str(checkpoint), "--output", str(tmp_path / "b"), "--use-gpu"]) == 1
        assert "device 'cuda'" in _one_error_line(capsys.readouterr().err, "bench")


def test_malformed_user_conf(setup, tmp_path, capsys):
    user = tmp_path / "user.conf"
    user.write_text("# tuned for this machine\ndlrm.Offline.target_qps 5000\n")
    assert _bench(setup, tmp_path / "out", *FAST, "--user-conf", str(user)) == 1
    captured = capsys.readouterr()
    line = _one_error_line(captured.err, "bench")
    assert f"{user}:2" in line
    assert not (tmp_path / "out" / "result.json").exists()


def test_user_conf_applies(setup, tmp_path, capsys):
    user = tmp_path / "user.conf"
    user.write_text("dlrm.Offline.min_duration = 250\ndlrm.Offline.target_qps = 2000\n")
    out = tmp_path / "out"
    assert _bench(setup, out, "--user-conf", str(user), "--quiet", "--no-plots") == 0
    capsys.readouterr()
    result = json.loads((out / "result.json").read_text())
    assert result["effective_min_duration_ms"] == 250
    assert result["effective_target_qps"] == 2000
    assert result["target_qps_source"] == "user.conf"
    # an option wins over user.conf
    assert _bench(setup, out, "--user-conf", str(user), "--duration", "200", "--target-qps", "1500", "--quiet",
                  "--no-plots") == 0
    capsys.readouterr()
    result = json.loads((out / "result.json").read_text())
    assert result["effective_min_duration_ms"] == 200
    assert result["effective_target_qps"] == 1500 and result["target_qps_source"] == "option"


def test_custom_trace_file(setup, tmp_path, capsys):
    out, trace = tmp_path / "out", tmp_path / "traces" / "mine.txt"
    trace.parent.mkdir()
    assert _bench(setup, out, *FAST, "--count-samples", "5", "--samples-to-aggregate-trace-file", str(trace),
                  "--numpy-rand-seed", "9", "--quiet", "--no-plots") == 0
    capsys.readouterr()
    pairs = Dataset(setup[0]).splits["test"]
    want = aggregate_offsets(pairs, AggregationConfig(quantile=MLPERF_QUERY_SIZE_QUANTILE, seed=9))[:6]
    np.testing.assert_array_equal(read_trace(trace), want)
    assert not (out / "dlrm_trace_of_aggregated_samples.txt").exists()
    assert json.loads((out / "result.json").read_text())["qsl"]["pairs"] == want[-1]


def test_aggregation_flags(setup, tmp_path, capsys):
    out = tmp_path / "out"
    assert _bench(setup, out, *FAST, "--samples-to-aggregate-fix", "3", "--count-samples", "50", "--quiet",
                  "--no-plots") == 0
    capsys.readouterr()
    result = json.loads((out / "result.json").read_text())
    assert result["qsl"]["aggregation"]["rule"] == "fixed" and result["qsl"]["pairs"] == 150
    assert result["mean_pairs_per_sample"] == 3
    # as in the reference harness, min/max takes precedence over fix
    out = tmp_path / "o2"
    assert _bench(setup, out, *FAST, "--samples-to-aggregate-fix", "3", "--samples-to-aggregate-min", "2",
                  "--samples-to-aggregate-max", "4", "--count-samples", "50", "--quiet", "--no-plots") == 0
    capsys.readouterr()
    aggregation = json.loads((out / "result.json").read_text())["qsl"]["aggregation"]
    assert aggregation["rule"] == "uniform" and (aggregation["min"], aggregation["max"]) == (2, 4)
    sizes = np.diff(read_trace(out / "dlrm_trace_of_aggregated_samples.txt"))
    assert sizes.size == 50 and sizes.min() >= 2 and sizes.max() <= 4
    # min without max: one line
    assert _bench(setup, tmp_path / "o3", *FAST, "--samples-to-aggregate-min", "2") == 1
    assert "together" in _one_error_line(capsys.readouterr().err, "bench")


def test_terabyte_profile_sets_reference_auc(setup, tmp_path, capsys):
    out = tmp_path / "out"
    assert _bench(setup, out, *FAST, "--profile", "dlrm-terabyte-pytorch", "--accuracy", "--count-samples", "3",
                  "--quiet") == 0
    capsys.readouterr()
    result = json.loads((out / "result.json").read_text())
    assert result["reference_auc"] == MLPERF_DLRM_REFERENCE_AUC and result["reference_auc_source"] == "option"
    assert result["config"]["max_batchsize"] == 2048
    assert result["qsl"]["performance_sample_count"] == 3  # the profile's 204800, clamped to the QSL


# --- a checkpoint in the DLRM reference's format ----------------------------------------------


def _rows(offsets: np.ndarray, samples: np.ndarray) -> np.ndarray:
    """Row numbers of the samples' pairs, sample after sample."""
    return np.concatenate([np.arange(offsets[s], offsets[s + 1]) for s in samples.tolist()])


def _auc_tolerance(labels: np.ndarray, scores: np.ndarray, err: float) -> float:
    """The most the AUC can change when every score moves by at most ``err``: the share of
    positive-negative pairs whose scores are within 2 * err (only those can swap or tie)."""
    pos, neg = np.sort(scores[labels == 1]), np.sort(scores[labels == 0])
    near = np.searchsorted(neg, pos + 2 * err, side="right") - np.searchsorted(neg, pos - 2 * err, side="left")
    return float(near.sum()) / (pos.size * neg.size)


def test_reference_checkpoint_accuracy_equals_naive_float64(setup, tmp_path, capsys):
    data, _, _ = setup
    cfg = preset("tiny", Dataset(data).table_sizes)
    model = build_model(cfg, seed=5)
    state = naive.reference_state(model)
    assert "bot_l.0.weight" in state and "top_l.0.bias" in state and "emb_l.25.weight" in state
    checkpoint = tmp_path / "reference.pt"
    torch.save({"state_dict": state, "epoch": np.int64(1), "nepochs": 1}, checkpoint)

    out = tmp_path / "out"
    rc = main(["bench", "--checkpoint", str(checkpoint), "--data", str(data), "--output", str(out), *FAST,
               *FP32, "--accuracy", "--count-samples", "8", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    capsys.readouterr()
    result = json.loads((out / "result.json").read_text())
    assert result["checkpoint_format"] == "reference"
    pairs = result["qsl"]["pairs"]
    assert pairs == _mlperf_offsets(data)[8]

    split = Dataset(data).split("test")
    params = naive.params_from_model(model)
    dense = torch.from_numpy(np.array(split.dense[:pairs]))
    indices = torch.from_numpy(np.array(split.sparse[:pairs]).astype(np.int64))
    with torch.no_grad():
        logits = naive.forward(params, dense, indices, interaction=cfg.interaction,
                               self_interaction=cfg.interaction_self)
    want_probs = torch.sigmoid(logits).numpy()  # (P,) float64
    labels = np.asarray(split.label[:pairs], dtype=np.float64)
    want = roc_auc(labels, want_probs)

    # The harness scores float32 predictions: each lies within `err` of the float64 one, so only
    # positive-negative pairs closer than 2 * err may order differently; that bounds the AUC gap.
    log = read_accuracy_log(out / "mlperf_log_accuracy.json")
    got_probs = np.empty(pairs)
    got_probs[_rows(_mlperf_offsets(data), log.samples)] = log.predictions
    np.testing.assert_array_equal(log.labels, labels[_rows(_mlperf_offsets(data), log.samples)])
    err = float(np.abs(got_probs - want_probs).max())
    assert err < 1e-5  # float32 arithmetic, not a different model
    assert result["roc_auc"] == pytest.approx(roc_auc(labels, got_probs), abs=1e-12)
    tolerance = _auc_tolerance(labels, want_probs, err)
    assert tolerance < 1e-4
    assert abs(result["roc_auc"] - want) <= tolerance + 1e-12


def test_max_ind_range_for_a_reference_checkpoint(setup, tmp_path, capsys):
    """The reference harness's --max-ind-range: a reference checkpoint trained on indices mod N
    (its tables capped at N rows, the range not recorded) runs on a dataset with larger tables."""
    data, _, _ = setup
    n = 500
    sizes = Dataset(data).table_sizes
    assert max(sizes) > n
    model = build_model(preset("tiny", tuple(min(s, n) for s in sizes)), seed=3)
    checkpoint = tmp_path / "capped.pt"
    torch.save({"state_dict": naive.reference_state(model)}, checkpoint)
    out = tmp_path / "out"
    args = ["bench", "--checkpoint", str(checkpoint), "--data", str(data), "--output", str(out), *FAST, *FP32,
            "--accuracy", "--count-samples", "8", "--quiet"]
    assert main(args) == 1
    assert "needs" in (err := capsys.readouterr().err) and "--max-ind-range" in err
    assert main(args + ["--max-ind-range", str(n)]) == 0, capsys.readouterr().err
    result = json.loads((out / "result.json").read_text())
    assert result["model"]["max_index_range"] == n
    pairs = result["qsl"]["pairs"]
    split = Dataset(data).split("test")
    with torch.no_grad():
        logits = naive.forward(naive.params_from_model(model), torch.from_numpy(np.array(split.dense[:pairs])),
                               torch.from_numpy(np.array(split.sparse[:pairs]).astype(np.int64) % n))
    log = read_accuracy_log(out / "mlperf_log_accuracy.json")
    got = np.empty(pairs)
    got[_rows(_mlperf_offsets(data), log.samples)] = log.predictions
    np.testing.assert_allclose(got, torch.sigmoid(logits).numpy(), rtol=0, atol=1e-5)

    assert main(["evaluate", "--checkpoint", str(checkpoint), "--data", str(data), "--max-ind-range", str(n),
                 "--out", str(tmp_path / "eval.json")]) == 0
    assert json.loads((tmp_path / "eval.json").read_text())["auc"] > 0
    # a range the checkpoint cannot have been trained with is refused by name
    assert main(args + ["--max-ind-range", "100"]) == 1
    assert "more than max index range 100" in capsys.readouterr().err
