"""The spark engine on a Spark standalone cluster (a master and a worker started here, executors in
their own JVMs and Python workers, reached by ``--spark-master spark://``): the same dataset as the
local engine, and clear errors when the executors cannot run dlrmkit or do not see OUT. The worker
runs in its own mount namespace where one directory is hidden (a tmpfs over it), as a directory
on a disk the executors' machines do not mount would be; without ``unshare`` that test is skipped.
Skipped, with the reason, where PySpark or Java is missing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dlrmkit.cli import main
from dlrmkit.config import PreprocessConfig
from dlrmkit.errors import ConfigError, EngineError
from preprocess_helpers import dataset_files

pyspark = pytest.importorskip("pyspark", reason="PySpark is not installed (pip install 'dlrmkit[spark]')")
if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
    pytest.skip("no Java on this machine (Spark needs Java 17+)", allow_module_level=True)

from dlrmkit.data.spark_engine import SparkOptions, preprocess_spark  # noqa: E402

REAL = Path(__file__).resolve().parents[2] / "shared" / "criteo_data" / "criteo_kaggle_train_head10109.txt.gz"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(cmd: list[str], log: Path, ready: str, timeout: float = 90) -> subprocess.Popen:
    env = dict(os.environ, SPARK_HOME=str(Path(pyspark.__file__).parent), SPARK_LOCAL_IP="127.0.0.1")
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + timeout
    while ready not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc)
            raise RuntimeError(f"{cmd[0]} did not start: {log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.2)
    return proc


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(master URL, a directory the executors cannot see or None) of a one-worker standalone cluster."""
    root = tmp_path_factory.mktemp("spark_cluster")
    hidden = root / "hidden"
    hidden.mkdir()
    spark_class = str(Path(pyspark.__file__).parent / "bin" / "spark-class")
    port = _free_port()
    master = _start([spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port",
                     str(port), "--webui-port", str(_free_port())], root / "master.log", "elected leader")
    worker_cmd = [spark_class, "org.apache.spark.deploy.worker.Worker", f"spark://127.0.0.1:{port}", "--host",
                  "127.0.0.1", "--cores", "2", "--memory", "2g", "--webui-port", str(_free_port()),
                  "--work-dir", str(root / "work")]
    unshare = shutil.which("unshare")
    namespaced = unshare is not None and subprocess.run(  # the same mount, in a namespace thrown away
        [unshare, "--mount", "--propagation", "private", "mount", "-t", "tmpfs", "none", str(hidden)],
        capture_output=True).returncode == 0
    if namespaced:  # the worker and its executors see an empty tmpfs where `hidden` is
        worker_cmd = [unshare, "--mount", "--propagation", "private", "sh", "-c",
                      f'mount -t tmpfs none "{hidden}" && exec "$@"', "sh"] + worker_cmd
    try:
        worker = _start(worker_cmd, root / "worker.log", "Successfully registered with master")
    except RuntimeError:
        _stop(master)
        raise
    yield f"spark://127.0.0.1:{port}", hidden if namespaced else None
    from pyspark.sql import SparkSession

    running = SparkSession.getActiveSession()
    if running is not None:
        running.stop()
    _stop(worker)
    _stop(master)


@pytest.mark.skipif(not REAL.is_file(), reason=f"{REAL} is absent (the real Criteo rows)")
def test_cluster_cli_same_dataset_as_local(tmp_path, cluster, capsys):
    """`dlrmkit preprocess --engine spark --spark-master spark://...` on the real rows, frequency
    vocabulary, write tasks on the executors: every file as the local engine writes it."""
    master, _ = cluster
    common = ["preprocess", "--dataset", "kaggle", "--input", str(REAL), "--vocab", "frequency",
              "--frequency-threshold", "2", "--quiet"]
    assert main(common + ["--out", str(tmp_path / "local"), "--workers", "1"]) == 0
    assert main(common + ["--out", str(tmp_path / "spark"), "--engine", "spark", "--spark-master", master,
                          "--spark-conf", "spark.executor.memory=1g"]) == 0
    assert dataset_files(tmp_path / "local") == dataset_files(tmp_path / "spark")
    meta = json.loads((tmp_path / "spark" / "metadata.json").read_text())
    assert meta["preprocess"]["engine"]["master"] == master
    assert meta["source"]["rows"] == json.loads((tmp_path / "local" / "metadata.json").read_text())["source"]["rows"]


def test_executors_without_dlrmkit_are_named(tmp_path, cluster):
    """An executor Python that cannot import dlrmkit (here the interpreter this virtual environment
    was made from) fails before any work, naming the host, the Python and the fix."""
    master, _ = cluster
    bare = Path(sys.base_prefix) / "bin" / "python3"
    if not bare.exists() or sys.base_prefix == sys.prefix:
        pytest.skip("the tests do not run in a virtual environment, so there is no Python without dlrmkit")
    src = tmp_path / "train.txt"
    src.write_text("0" + "\t" * 39 + "\n")
    cfg = PreprocessConfig(dataset="kaggle", inputs=(str(src),), vocab="reference")
    options = SparkOptions(master, conf=(("spark.pyspark.python", str(bare)), ("spark.executor.memory", "1g")))
    with pytest.raises(EngineError, match=rf"executor \S+: its Python \({bare}\) cannot run the spark engine "
                                          r"\(ImportError: .+\)\. Install 'dlrmkit\[spark\]' there"):
        preprocess_spark(cfg, tmp_path / "out", options, progress=False)
    assert not (tmp_path / "out" / "metadata.json").exists()


def test_out_the_executors_do_not_see_is_refused(tmp_path, cluster):
    """OUT on a disk the executors do not mount: refused before any stage file is written, rather than
    executors writing into directories of their own that the driver never reads."""
    master, hidden = cluster
    if hidden is None:
        pytest.skip("`unshare --mount` with a tmpfs mount is not permitted here, so no directory can be hidden "
                    "from the worker")
    src = tmp_path / "train.txt"
    src.write_text("0" + "\t" * 39 + "\n")
    cfg = PreprocessConfig(dataset="kaggle", inputs=(str(src),), vocab="reference")
    out = hidden / "out"
    with pytest.raises(EngineError, match=rf"executor \S+ does not see OUT \({out}\): .* mount at the same path"):
        preprocess_spark(cfg, out, SparkOptions(master, conf=(("spark.executor.memory", "1g"),)), progress=False)
    assert not (out / ".stage").exists()


@pytest.mark.parametrize("uri", ["hdfs://namenode:8020/criteo/out", "s3a://bucket/criteo"])
def test_out_as_a_uri_is_refused(tmp_path, uri, capsys):
    """A URI for OUT would quietly become a local directory named after it: refused, for both engines."""
    src = tmp_path / "train.txt"
    src.write_text("0" + "\t" * 39 + "\n")
    for engine in ("local", "spark"):
        rc = main(["preprocess", "--dataset", "kaggle", "--input", str(src), "--out", uri, "--engine", engine,
                   "--quiet"])
        err = capsys.readouterr().err
        assert rc == 1 and f"--out {uri}: the dataset files are written in place" in err, err
    assert not Path(uri.split(":")[0] + ":").exists()
    with pytest.raises(ConfigError):
        preprocess_spark(PreprocessConfig(dataset="kaggle", inputs=(str(src),)), uri, progress=False)
