"""One file interface for checkpoints and stream folders: the local disk, or Hadoop's filesystem."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra import filesystem
from infra.filesystem import FilesError, HadoopFiles, LocalFiles, files_for, join, read_text
from tests.helpers.remote import viewfs_root


def _exercise(files: filesystem.Files, root: str) -> None:
    folder = join(root, "logs")
    assert files.names(folder) == [] and not files.is_dir(folder)
    files.move(join(root, "a.txt"), join(folder, "deep/b.txt"))  # the target's folders are created
    assert not files.exists(join(root, "a.txt")) and files.is_dir(join(folder, "deep"))
    assert list(files.lines(join(folder, "deep/b.txt"))) == [b"v1", b'{"x":1}']
    assert files.sizes(join(folder, "deep")) == {"b.txt": 11}
    assert files.names(folder) == ["deep"] and files.sizes(folder) == {}  # folders have no size
    files.delete(folder)
    files.delete(folder)  # gone already: nothing to do
    assert not files.exists(folder)


def test_local_files(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text('v1\n{"x":1}\n')
    _exercise(LocalFiles(), f"file:{tmp_path}")


@pytest.mark.spark
def test_hadoop_files_on_file_and_a_remote_scheme(spark, tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "a.txt").write_text('v1\n{"x":1}\n')
    _exercise(HadoopFiles(spark), (tmp_path / "plain").as_uri())  # file:/// through Hadoop
    remote = viewfs_root(spark, tmp_path / "mounted")
    (tmp_path / "mounted" / "a.txt").write_text('v1\n{"x":1}\n')
    assert isinstance(files_for(remote), HadoopFiles)
    _exercise(files_for(remote), remote)
    (tmp_path / "mounted" / "metadata").write_text('{"id":"q"}\n')
    assert read_text(join(remote, "metadata")) == '{"id":"q"}'


def test_a_remote_uri_without_spark_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(filesystem, "active_spark", lambda: None)
    assert isinstance(files_for(str(tmp_path)), LocalFiles)
    with pytest.raises(FilesError, match="no SparkSession"):
        files_for("abfss://lake@acct.dfs.core.windows.net/checkpoints")
