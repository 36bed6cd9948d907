"""run_info.json's provenance: the code's commit, the packages, the model files' fingerprint."""

from tests.conftest import ROOT
from xling_edit.provenance import code_version, model_fingerprint, package_versions


def test_code_and_packages():
    code = code_version(ROOT)
    assert code.get("git_commit") is None or len(code["git_commit"]) == 40
    versions = package_versions()
    assert versions["torch"] and versions["transformers"]


def test_model_fingerprint_changes_with_the_files(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"a" * 3_000_000)
    (tmp_path / "notes.txt").write_text("not a model file")
    first = model_fingerprint(tmp_path)
    assert first["files"] == 2 and len(first["sha256"]) == 64
    (tmp_path / "notes.txt").write_text("changed")
    assert model_fingerprint(tmp_path)["sha256"] == first["sha256"]  # not a model file
    (tmp_path / "model.safetensors").write_bytes(b"a" * 2_999_999 + b"b")  # the last byte
    assert model_fingerprint(tmp_path)["sha256"] != first["sha256"]
    assert model_fingerprint(None)["sha256"] is None and "reason" in model_fingerprint("x/y")
