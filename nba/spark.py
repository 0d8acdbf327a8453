"""The one SparkSession of a process: `nba decide-batch --engine spark` and the `spark`
profile's Feast offline store (which takes the active session) both run on it.

`session(settings)` checks for Java first (Spark 4 needs Java 17 or later) and fails with one
line naming the component and what to do, before anything is written. The session runs on
`NBA_SPARK_MASTER` (default `local[2]`), on loopback, without its web UI or progress bars, with
the JVM's own log at ERROR (a log4j2 file in the work folder) and its console output in
`<work>/spark/jvm.log`: a person sees our lines, not Spark's.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nba.errors import NbaError
from nba.settings import Settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

MIN_JAVA = 17

# What every session gets; `NBA_SPARK_MASTER` says where it runs.
SPARK_CONF: dict[str, str] = {
    "spark.ui.enabled": "false",  # no web server on a port of its own
    "spark.ui.showConsoleProgress": "false",  # no progress bars on the console
    "spark.sql.shuffle.partitions": "4",  # the default 200 is for clusters: tiny tasks on 2 cores
    "spark.sql.session.timeZone": "UTC",  # timestamps read and written as UTC, whatever the machine says
    "spark.driver.host": "127.0.0.1",  # loopback only (no network but loopback)
    "spark.driver.bindAddress": "127.0.0.1",
    "spark.sql.execution.arrow.pyspark.enabled": "true",  # toPandas / createDataFrame through Arrow
    "spark.sql.execution.arrow.maxRecordsPerBatch": "20000",  # customers per core call in a partition
    "spark.python.worker.reuse": "true",  # a worker keeps its loaded engine between tasks
}

_LOG4J = """\
# written by nba.spark: the JVM's own log, errors only (our lines say what happened)
rootLogger.level = error
rootLogger.appenderRef.stderr.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{yy/MM/dd HH:mm:ss} %p %c{1}: %m%n%ex
"""


class SparkUnavailable(NbaError):
    """Spark cannot start here (no Java, or a Java too old, or pyspark not installed)."""


def java_version() -> tuple[str, int]:
    """The `java` Spark would launch (JAVA_HOME's, else the PATH's) and its major version."""
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not Path(java).is_file():
        where = f"JAVA_HOME={home} has no bin/java" if home else "no `java` on PATH and JAVA_HOME unset"
        raise SparkUnavailable(f"Spark: Java {MIN_JAVA}+ not found ({where}); install a JRE "
                               f"(apt-get install openjdk-{MIN_JAVA}-jre-headless) or set JAVA_HOME")
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30).stderr
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SparkUnavailable(f"Spark: {java} -version failed ({exc}); install Java {MIN_JAVA}+ or set JAVA_HOME") from None
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if m is None:
        raise SparkUnavailable(f"Spark: cannot read the version of {java} ({out.strip()[:120]!r})")
    major = int(m.group(1)) if m.group(1) != "1" else int(m.group(2) or 0)  # "1.8.0" is Java 8
    if major < MIN_JAVA:
        raise SparkUnavailable(f"Spark: {java} is Java {major}; Spark 4 needs Java {MIN_JAVA} or later "
                               f"(apt-get install openjdk-{MIN_JAVA}-jre-headless, then set JAVA_HOME)")
    return java, major


def check() -> None:
    """Fail with one line if Spark cannot run here: pyspark missing, or Java missing or too old."""
    try:
        import pyspark  # noqa: F401
    except ImportError:
        raise SparkUnavailable("Spark: pyspark is not installed; install the `spark` extra "
                               "(pip install -c constraints.txt 'nba[spark]')") from None
    java_version()


def session(settings: Settings, conf: dict[str, str] | None = None) -> SparkSession:
    """The process's SparkSession: the active one, else a new one on `settings.spark_master`."""
    check()
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    folder = (settings.work / "spark").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    log4j = folder / "log4j2.properties"
    if not log4j.is_file() or log4j.read_text() != _LOG4J:
        log4j.write_text(_LOG4J)
    # the Python workers run this interpreter (the venv's), on loopback
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    java_opts = f"-Dlog4j2.configurationFile=file:{log4j}"
    options = {**SPARK_CONF, "spark.driver.extraJavaOptions": java_opts, "spark.executor.extraJavaOptions": java_opts,
               "spark.local.dir": str(folder / "tmp"), **(conf or {})}
    _start_context(settings.spark_master, options, folder / "jvm.log")
    spark = SparkSession.builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def _start_context(master: str, options: dict[str, str], log: Path) -> None:
    """Start the JVM with its console output (the launcher's notices, the JVM's warnings) in
    `log` instead of the terminal, and the SparkContext on it (the session builder takes it)."""
    from pyspark import SparkConf, SparkContext
    from pyspark.java_gateway import launch_gateway

    conf = SparkConf(loadDefaults=False).setMaster(master).setAppName("nba").setAll(list(options.items()))
    out: Any = open(log, "ab")  # noqa: SIM115 (the JVM writes to it for as long as it lives)
    try:
        gateway = launch_gateway(conf, popen_kwargs={"stdout": out, "stderr": out})
    except Exception as exc:
        out.close()
        tail = log.read_text(errors="replace")[-600:].strip() if log.is_file() else ""
        raise SparkUnavailable(f"Spark: the JVM did not start ({type(exc).__name__}: {exc}); its output, in {log}, "
                               f"ends: {tail}") from None
    SparkContext(conf=conf, gateway=gateway)
