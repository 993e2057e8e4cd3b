"""Starting Spark for dlrmkit: PySpark and Java checked first, with what was expected, what was
found and how to fix it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
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
    """A SparkSession for ``options``; EngineError when PySpark or Java is missing or Spark cannot start."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise EngineError("the spark engine needs PySpark: `pip install 'dlrmkit[spark]'` (or `pip install "
                          "pyspark`), or use --engine local") from None
    check_java()
    builder = (SparkSession.builder.master(options.master).appName("dlrmkit preprocess")
               .config("spark.sql.execution.arrow.maxRecordsPerBatch", "65536"))
    if options.master.startswith("local"):  # Python workers run this interpreter, which has dlrmkit
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    for key, value in options.conf:
        builder = builder.config(key, value)
    try:
        spark = builder.getOrCreate()
    except Exception as e:  # py4j / Java gateway errors come in several types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EngineError(f"Spark did not start (master {options.master}): {first}") from None
    spark.sparkContext.setLogLevel("ERROR")
    return spark
