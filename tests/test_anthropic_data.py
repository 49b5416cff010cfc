"""`make data SOURCE=...`: pinned checksums, atomic writes, resume, refusing bad copies."""

from __future__ import annotations

import shutil

from propensity_evals.anthropic_data import pinned_files, sha256_of
from tests.conftest import make

SURVIVAL = "human_generated_evals/survival-instinct.jsonl"


def test_make_data_fetches_verifies_then_skips(tmp_path, mirror):
    first = make("data", f"SOURCE={mirror}", f"DATA_DIR={tmp_path}")
    assert "49 fetched" in first.stdout
    root = tmp_path / "advanced-ai-risk"
    for pinned in pinned_files():
        assert sha256_of(root / pinned.relpath) == pinned.sha256
    mtimes = {p: p.stat().st_mtime_ns for p in root.rglob("*.jsonl")}
    second = make("data", f"SOURCE={mirror}", f"DATA_DIR={tmp_path}")
    assert "0 fetched" in second.stdout and "49 already verified" in second.stdout
    assert mtimes == {p: p.stat().st_mtime_ns for p in root.rglob("*.jsonl")}


def test_corrupt_source_is_refused_without_touching_good_files(tmp_path, mirror):
    data = tmp_path / "data"
    make("data", f"SOURCE={mirror}", f"DATA_DIR={data}")
    bad_source = tmp_path / "bad"
    shutil.copytree(mirror, bad_source)
    target = bad_source / "advanced-ai-risk" / SURVIVAL
    target.chmod(0o644)
    target.write_bytes(target.read_bytes().replace(b"(A)", b"(B)", 1))
    (data / "advanced-ai-risk" / SURVIVAL).unlink()
    good = {p: p.stat().st_mtime_ns for p in (data / "advanced-ai-risk").rglob("*.jsonl")}

    result = make("data", f"SOURCE={bad_source}", f"DATA_DIR={data}", check=False)

    assert result.returncode != 0
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "checksum mismatch" in error_lines[0]
    assert "Traceback" not in result.stderr
    assert not (data / "advanced-ai-risk" / SURVIVAL).exists()
    assert not list((data / "advanced-ai-risk").rglob("*.part"))
    assert good == {p: p.stat().st_mtime_ns for p in (data / "advanced-ai-risk").rglob("*.jsonl")}


def test_interrupted_transfer_resumes_and_a_bad_partial_is_replaced(tmp_path, mirror):
    data = tmp_path / "data"
    make("data", f"SOURCE={mirror}", f"DATA_DIR={data}")
    dest = data / "advanced-ai-risk" / SURVIVAL
    original = dest.read_bytes()
    # An interrupted copy: half the bytes in the .part, the final file not yet in place.
    dest.unlink()
    part = dest.with_name(dest.name + ".part")
    part.write_bytes(original[: len(original) // 2])
    result = make("data", f"SOURCE={mirror}", f"DATA_DIR={data}")
    assert "1 fetched" in result.stdout
    assert dest.read_bytes() == original and not part.exists()
    # A .part that is not a prefix of the real file must not survive into the result.
    dest.unlink()
    part.write_bytes(b"garbage" * 100)
    make("data", f"SOURCE={mirror}", f"DATA_DIR={data}")
    assert dest.read_bytes() == original and not part.exists()
    # A locally damaged file is re-fetched, not trusted.
    dest.write_bytes(original[:-10])
    make("data", f"SOURCE={mirror}", f"DATA_DIR={data}")
    assert dest.read_bytes() == original


def test_missing_source_folder_is_one_clear_line(tmp_path):
    result = make("data", f"SOURCE={tmp_path / 'nowhere'}", f"DATA_DIR={tmp_path}", check=False)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "SOURCE must hold advanced-ai-risk/" in result.stderr


def test_make_data_prefers_a_local_mirror_when_one_exists(mirror, tmp_path):
    beside = make("-n", "data", f"ANTHROPIC_EVALS_MIRROR={mirror}").stdout
    assert f"--source '{mirror}'" in beside
    absent = make("-n", "data", f"ANTHROPIC_EVALS_MIRROR={tmp_path}").stdout
    assert "--source" not in absent  # no copy there: download from the pinned commit
    forced = make("-n", "data", f"ANTHROPIC_EVALS_MIRROR={mirror}", "SOURCE=").stdout
    assert "--source" not in forced
