"""The spark engine's jar folder: checked before Spark starts, pruned of what pyspark ships."""

from pathlib import Path

import pytest

from infra.jvm import DELTA_SESSION_CONF, JarsMissing, artifact_name, jar_files, prune_provided, spark_jar_conf
from infra.settings import Settings
from infra.spark import engine_conf


def touch(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")


def test_a_missing_or_incomplete_jar_folder_is_one_error_naming_make_install(tmp_path: Path) -> None:
    for folder in (tmp_path / "absent", tmp_path / "no-delta"):
        if folder.name == "no-delta":
            touch(folder, "hadoop-azure-3.5.0.jar")
        with pytest.raises(JarsMissing, match="run `make install`") as caught:
            jar_files(folder)
        assert "\n" not in str(caught.value) and str(folder) in str(caught.value)


def test_the_session_gets_every_jar_and_delta_s_extension(tmp_path: Path) -> None:
    touch(tmp_path, "delta-spark_4.2_2.13-4.4.0.jar", "delta-storage-4.4.0.jar")
    conf = spark_jar_conf(tmp_path)
    assert conf["spark.jars"].split(",") == [
        str(tmp_path / "delta-spark_4.2_2.13-4.4.0.jar"),
        str(tmp_path / "delta-storage-4.4.0.jar"),
    ]
    assert DELTA_SESSION_CONF.items() <= conf.items()


def test_only_the_spark_engine_asks_for_jars_and_a_users_own_spark_jars_wins(tmp_path: Path) -> None:
    assert engine_conf(Settings(state_dir=tmp_path)) == {}  # delta-rs needs no JVM packages
    with pytest.raises(JarsMissing):
        engine_conf(Settings(state_dir=tmp_path, lake_engine="spark", jars_dir=str(tmp_path / "none")))
    own = Settings(state_dir=tmp_path, lake_engine="spark", spark_conf={"spark.jars": "/opt/delta.jar"})
    assert engine_conf(own) == {}


def test_jars_that_pyspark_ships_are_pruned(tmp_path: Path) -> None:
    spark_jars, ours = tmp_path / "pyspark", tmp_path / "ours"
    touch(spark_jars, "jackson-core-2.18.2.jar", "hadoop-client-api-3.5.0.jar")
    touch(
        ours,
        "jackson-core-2.13.5.jar",
        "hadoop-client-api-3.4.2.jar",
        "delta-spark_4.2_2.13-4.4.0.jar",
        "wildfly-openssl-2.2.5.Final.jar",
    )
    removed = prune_provided(ours, spark_jars)
    assert removed == ["hadoop-client-api-3.4.2.jar", "jackson-core-2.13.5.jar"]
    assert sorted(p.name for p in ours.iterdir()) == [
        "delta-spark_4.2_2.13-4.4.0.jar",
        "wildfly-openssl-2.2.5.Final.jar",
    ]
    assert artifact_name("zstd-jni-1.5.7-3.jar") == "zstd-jni"


def test_an_unknown_engine_is_a_settings_error_listing_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown lake engine 'duckdb': choose one of delta-rs, spark"):
        Settings(state_dir=tmp_path, lake_engine="duckdb")
    assert Settings(state_dir=tmp_path).lake_engine == "delta-rs"
    assert Settings(state_dir=tmp_path, spark_master="spark://10.0.0.1:7077").lake_engine == "spark"
