"""The spark engine's JVM packages: the jar folder ``make install`` fills from ``jvm/pom.xml``.

delta-spark and hadoop-azure are resolved from Maven Central once, at install time, into a
git-ignored folder; a Spark session that needs them names the files in ``spark.jars``, so nothing
is downloaded when Spark starts and a run is reproducible offline (docs/DEPLOY.md, "JVM packages").
The delta-rs engine needs none of it.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from infra.errors import LakesightError

__all__ = ["DELTA_SESSION_CONF", "JarsMissing", "default_jars_dir", "prune_provided", "spark_jar_conf"]

# What makes a Spark session write Delta through delta-spark.
DELTA_SESSION_CONF = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}
# The jar that must be there for the folder to count as installed.
DELTA_JAR = re.compile(r"^delta-spark_[0-9.]+_2\.13-[0-9.]+\.jar$")
# ``name-1.2.3.jar`` / ``name-1.2.3-4.jar`` / ``name-2.2.5.Final.jar`` → ``name``
_VERSIONED = re.compile(r"^(?P<name>.+?)-\d[\w.]*(?:-\d+)?\.jar$")


class JarsMissing(LakesightError, RuntimeError):
    """The spark engine was asked for but its JVM packages are not installed."""


def default_jars_dir() -> Path:
    """``.jars`` beside the project's sources (the folder ``make install`` writes)."""
    return Path(__file__).resolve().parent.parent / ".jars"


def jar_files(folder: Path) -> list[Path]:
    """The jars of ``folder``; a missing folder or one without delta-spark is one clear error."""
    jars = sorted(folder.glob("*.jar")) if folder.is_dir() else []
    if not any(DELTA_JAR.match(jar.name) for jar in jars):
        raise JarsMissing(
            f"the spark lake engine needs delta-spark's jars in {folder}, which has none: run `make install` "
            "(or set LAKESIGHT_LAKE_ENGINE=delta-rs)"
        )
    return jars


def spark_jar_conf(folder: Path) -> dict[str, str]:
    """Session conf for delta-spark and hadoop-azure from the installed jar folder."""
    return {"spark.jars": ",".join(str(jar) for jar in jar_files(folder)), **DELTA_SESSION_CONF}


def artifact_name(jar: str) -> str:
    """The artifact a versioned jar file name holds (``delta-storage-4.4.0.jar`` → ``delta-storage``)."""
    match = _VERSIONED.match(jar)
    return match.group("name") if match else jar.removesuffix(".jar")


def prune_provided(folder: Path, spark_jars: Path) -> list[str]:
    """Remove from ``folder`` every artifact Spark already ships (another version of it would shadow
    Spark's on the class path); returns the removed file names. Maven's resolution brings them in as
    delta-kernel's and hadoop-azure's transitive dependencies."""
    provided = {artifact_name(jar.name) for jar in spark_jars.glob("*.jar")}
    removed = []
    for jar in sorted(folder.glob("*.jar")):
        if artifact_name(jar.name) in provided:
            jar.unlink()
            removed.append(jar.name)
    return removed


def _pyspark_jars() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent / "jars"


def main(argv: list[str]) -> int:
    """``python -m infra.jvm prune FOLDER``: the install step after Maven's copy."""
    if len(argv) != 2 or argv[0] != "prune":
        print("usage: python -m infra.jvm prune FOLDER", file=sys.stderr)
        return 2
    folder = Path(argv[1])
    removed = prune_provided(folder, _pyspark_jars())
    kept = jar_files(folder)
    print(f"{len(kept)} jars in {folder} for the spark engine ({len(removed)} that pyspark ships removed)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
