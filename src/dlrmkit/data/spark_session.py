"""Starting Spark for dlrmkit: PySpark and Java checked first, with what was expected, what was
found and how to fix it."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from dlrmkit.errors import EngineError

MIN_JAVA = 17


@dataclass(frozen=True)
class SparkOptions:
    master: str = "local[*]"
    partitions: int | None = None  # target partitions per plain input file (gzip files are one each)
    conf: tuple[tuple[str, str], ...] = ()
    write_task_rows: int = 1 << 20  # rows a write task indexes and writes (staged splits are cut to this)


def check_java() -> str:
    """The ``java -version`` line; EngineError naming what was expected and found, and the fix."""
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not Path(java).exists():
        where = f"JAVA_HOME={home} has no bin/java" if home else "no `java` on PATH and JAVA_HOME is not set"
        raise EngineError(f"the spark engine needs Java {MIN_JAVA} or newer: {where}. Install a JDK "
                          f"(e.g. `apt install openjdk-17-jre-headless`) or set JAVA_HOME, or use --engine local")
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60).stderr
    except (OSError, subprocess.TimeoutExpired) as e:
        raise EngineError(f"the spark engine needs Java {MIN_JAVA}+: `{java} -version` failed ({e})") from None
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    major = int(m.group(1)) if m else 0
    major = int(m.group(2)) if m and major == 1 and m.group(2) else major  # "1.8" is Java 8
    if major < MIN_JAVA:
        raise EngineError(f"the spark engine needs Java {MIN_JAVA} or newer; {java} is "
                          f"{out.strip().splitlines()[0] if out.strip() else 'of unknown version'}. "
                          f"Point JAVA_HOME at a newer JDK, or use --engine local")
    return out.strip().splitlines()[0]


def spark_session(options: SparkOptions):
    """A SparkSession for ``options``; EngineError when PySpark or Java is missing or Spark cannot start.

    Executors run Python workers with ``spark.pyspark.python`` when given in ``options.conf``, else
    ``PYSPARK_PYTHON``, else this interpreter (so a virtual environment on a shared file system
    works as it is); `check_executors` then proves they can run dlrmkit. A running session for
    another master, Python or setting is stopped first (Spark keeps one per process)."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise EngineError("the spark engine needs PySpark: `pip install 'dlrmkit[spark]'` (or `pip install "
                          "pyspark`), or use --engine local") from None
    check_java()
    python = dict(options.conf).get("spark.pyspark.python") or os.environ.get("PYSPARK_PYTHON") or sys.executable
    conf = {"spark.sql.execution.arrow.maxRecordsPerBatch": "65536",
            # the dictionaries and the training counts come to the driver whole: for Terabyte about
            # 4 GB each, over Spark's default limit of 1 GB (--spark-conf may set one)
            "spark.driver.maxResultSize": "0", **dict(options.conf)}
    running = SparkSession.getActiveSession()
    if running is not None:
        have = running.sparkContext.getConf()
        if (running.sparkContext.master != options.master or running.sparkContext.pythonExec != python
                or any(have.get(key, None) != value for key, value in conf.items())):
            running.stop()
    builder = SparkSession.builder.master(options.master).appName("dlrmkit preprocess")
    for key, value in conf.items():
        builder = builder.config(key, value)
    before = os.environ.get("PYSPARK_PYTHON")
    os.environ["PYSPARK_PYTHON"] = python  # PySpark reads it when the context starts, not the conf
    try:
        spark = builder.getOrCreate()
    except Exception as e:  # py4j / Java gateway errors come in several types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EngineError(f"Spark did not start (master {options.master}): {first}") from None
    finally:
        if before is None:
            del os.environ["PYSPARK_PYTHON"]
        else:
            os.environ["PYSPARK_PYTHON"] = before
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def source_fingerprint() -> str:
    """dlrmkit's version and a digest of its Python sources: driver and executors must agree, or
    the same input could give different bytes."""
    import dlrmkit

    root = Path(dlrmkit.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return f"dlrmkit {dlrmkit.__version__} (sources {digest.hexdigest()[:12]})"


def check_executors(spark, out: Path) -> None:
    """One small job with a task per core: every executor must run dlrmkit (the driver's version and
    sources, with pyarrow) and see ``out`` (the stage and dataset files are written there by the
    executors and read by the driver). EngineError naming the host and what to do otherwise."""
    token = out / f".spark-visible-{uuid.uuid4().hex}"
    token.write_text("written by the driver; executors check they see it\n")
    try:
        found = _probe(spark, str(token))
    finally:
        token.unlink(missing_ok=True)
    mine = source_fingerprint()
    for host, python, theirs, visible in sorted(set(found)):
        if theirs.startswith("ImportError"):
            raise EngineError(f"executor {host}: its Python ({python}) cannot run the spark engine ({theirs}). "
                              f"Install 'dlrmkit[spark]' there, or name a Python that has it with "
                              f"--spark-conf spark.pyspark.python=PATH")
        if theirs != mine:
            raise EngineError(f"executor {host} runs {theirs}, the driver {mine}: install the same dlrmkit on "
                              f"the driver and every executor")
        if not visible:
            raise EngineError(f"executor {host} does not see OUT ({out}): the executors write the stage and the "
                              f"dataset there, so OUT must be a directory on a file system that the driver and "
                              f"every executor mount at the same path (NFS, Lustre, ...)")


def _probe(spark, token: str) -> list[tuple[str, str, str, bool]]:
    """(host, Python, dlrmkit fingerprint or the import error, sees ``token``) from every task."""

    def probe(_):  # pickled by value: it must run where dlrmkit cannot be imported
        import importlib
        import os
        import socket
        import sys

        try:
            importlib.import_module("pyarrow")
            from dlrmkit.data.spark_session import source_fingerprint as fingerprint
            theirs = fingerprint()
        except ImportError as e:
            theirs = f"ImportError: {e}"
        yield socket.gethostname(), sys.executable, theirs, os.path.exists(token)

    sc = spark.sparkContext
    tasks = max(1, sc.defaultParallelism)
    try:
        return sc.parallelize(range(tasks), tasks).mapPartitions(probe).collect()
    except Exception as e:
        cause = re.sub(r"^java\.io\.IOException: ", "", root_cause(e))
        hint = (f" The executors' Python is {sc.pythonExec}: name one that has 'dlrmkit[spark]' with --spark-conf "
                f"spark.pyspark.python=PATH" if re.search(r"Cannot run program|error=\d+|[Pp]ython", cause) else "")
        raise EngineError(f"the executor check job failed: {cause}.{hint}") from None


def root_cause(e: Exception) -> str:
    """The line of a failed Spark job's error that says what went wrong: a Java exception's last
    cause, a Python worker's exception (the traceback's last line), else the first error line."""
    text = str(e)
    causes = re.findall(r"Caused by: ([^\n]+)", text)
    lines = [line.strip() for line in text.splitlines() if line.strip()] or [type(e).__name__]
    if causes:
        return causes[-1].strip()
    if "Traceback (most recent call last)" in text:
        return lines[-1]
    return next((line for line in lines if "Error" in line or "Exception" in line), lines[0])
