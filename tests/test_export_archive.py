"""The studio's export download: a zip of the export folder holds its own files and nothing a link points at."""

from __future__ import annotations

import zipfile

from tunelab.ui.exports import ExportManager


def test_export_zip_leaves_out_symlinked_files(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("private key")
    folder = tmp_path / "run" / "exports" / "merged"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").symlink_to(secret)
    (folder / "outside").symlink_to(tmp_path, target_is_directory=True)
    path, name = ExportManager(tmp_path / "studio", children=None).archive(str(tmp_path / "run"), "merged")
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        assert names == ["merged/config.json"], names
        assert all(b"private key" not in archive.read(n) for n in names)
    assert name == "run-merged.zip"
