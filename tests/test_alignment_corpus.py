"""End-to-end tests of download_alignment_dataset.py and explore_dataset.py on a local mirror.

The mirror follows the real layout (root-level ``<source>.jsonl``) and schema (shared keys plus
per-source extras, nulls, empty strings) and carries the defects the tools must survive. The
scripts run through their command lines; nothing reaches the network.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NON_ASCII_TITLE = "Über naïve Optimierer: ein Gedankenexperiment — ✓"


def _doc(source, doc_id, title, text, url, date, authors, **extra):
    row = {
        "id": doc_id,
        "source": source,
        "title": title,
        "text": text,
        "url": url,
        "date_published": date,
        "authors": authors,
        "source_type": "blog" if source != "arxiv" else "pdf",
        "summaries": [],
    }
    row.update(extra)
    return json.dumps(row, ensure_ascii=False).encode("utf-8")


def _lesswrong() -> bytes:
    extra = {"karma": 10, "votes": 3, "tags": ["AI"], "comment_count": 2}
    lines = [
        _doc(
            "lesswrong",
            "lw1",
            "Risks from Learned Optimization",
            "We discuss mesa-optimizers and inner alignment in depth.",
            "https://lesswrong.com/1",
            "2019-06-05T00:00:00Z",
            ["Evan Hubinger", "Chris van Merwijk"],
            **extra,
        ),
        _doc(
            "lesswrong",
            "lw2",
            NON_ASCII_TITLE,
            "Ein kurzer Text über MESA-Optimierung.",
            "https://lesswrong.com/2",
            "2021-01-02T03:04:05Z",
            ["Evan Hubinger"],
            **extra,
        ),
        b'{"id": "lw3", "title": "broken", "text": "unterminated',  # corrupt JSON: line 3
        _doc(
            "lesswrong",
            "lw4",
            "",
            "Short post without a date.",
            "https://lesswrong.com/4",
            None,
            [],
            karma=None,
            votes=0,
            tags=[],
            comment_count=0,
        ),
        # Same id as line 1 (a re-crawl), same url as line 2.
        _doc(
            "lesswrong",
            "lw1",
            "Risks (again)",
            "one two three",
            "https://lesswrong.com/2",
            "2019-06-06T00:00:00Z",
            ["Evan Hubinger"],
            **extra,
        ),
    ]
    return b"\n".join(lines) + b"\n"


def _arxiv() -> bytes:
    lines = [
        _doc(
            "arxiv",
            "ax1",
            "Concrete Problems in AI Safety",
            "Five practical research problems in AI safety.",
            "https://arxiv.org/abs/1606.06565",
            "2016-06-21T00:00:00Z",
            ["Dario Amodei", "Chris Olah"],
            doi=None,
            categories=["cs.AI"],
            primary_category="cs.AI",
            abstract="Five problems.",
        ),
        b'{"id": "ax2", "title": "caf\xe9 latin-1", "text": "bad bytes"}',  # not UTF-8: line 2
        json.dumps(
            {
                "id": "ax3",
                "source": "arxiv",
                "title": "No text here",
                "url": "https://arxiv.org/abs/3",
                "date_published": "2020-01-01T00:00:00Z",
                "authors": ["A. Nobody"],
            }
        ).encode(),  # missing text: line 3
        _doc(
            "arxiv",
            "ax4",
            "Scalable agent alignment via reward modeling",
            "Reward modeling for agent alignment.",
            "https://arxiv.org/abs/1811.07871",
            "2018-11-19T00:00:00Z",
            ["Jan Leike"],
            doi="10.0/xyz",
            categories=[],
            primary_category="cs.LG",
            abstract="",
            summaries=None,
        ),
    ]
    return b"\n".join(lines)  # no newline at the end of the file: the last row still counts


def _aisafety_info() -> bytes:
    lines = [
        json.dumps(
            {
                "id": "ai1",
                "source": "aisafety.info",
                "title": "What is inner alignment?",
                "text": "Inner alignment asks whether a mesa optimizer shares the base objective.",
                "url": "https://lesswrong.com/1",  # also in lesswrong
                "date_published": "",
                "authors": "Stampy",
                "status": "Live on site",
                "alternate_phrasings": [],
            }
        ).encode(),
        json.dumps(
            {
                "id": "ai2",
                "source": "aisafety.info",
                "title": None,
                "text": "",
                "url": "",
                "date_published": "2023-05-01T12:00:00Z",
                "authors": None,
                "status": None,
            }
        ).encode(),
        b"",  # a blank line in the middle: line 3
        json.dumps(
            {
                "id": "ai4",
                "source": "aisafety.info",
                "title": "Bad date",
                "text": "x y",
                "url": "https://aisafety.info/4",
                "date_published": "May 2023",
                "authors": ["Stampy"],
            }
        ).encode(),
    ]
    return b"\n".join(lines) + b"\n"


MIRROR = {
    "lesswrong.jsonl": _lesswrong(),
    "arxiv.jsonl": _arxiv(),
    "aisafety.info.jsonl": _aisafety_info(),
}
SOURCES = ["aisafety.info", "arxiv", "lesswrong"]


def run(script: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, script, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode != 0
    err = result.stderr.strip()
    assert "Traceback" not in result.stderr
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    for fragment in fragments:
        assert fragment in err, err


@pytest.fixture(scope="module")
def corpus_mirror(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mirror")
    for name, data in MIRROR.items():
        (root / name).write_bytes(data)
    (root / "README.md").write_text("not a source\n")
    return root


@pytest.fixture(scope="module")
def downloaded(corpus_mirror, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("data") / "alignment_dataset"
    result = run(
        "download_alignment_dataset.py", "--source-dir", str(corpus_mirror), "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    return out, result


@pytest.fixture(scope="module")
def explored(downloaded) -> tuple[Path, subprocess.CompletedProcess]:
    out, _ = downloaded
    result = run("explore_dataset.py", "--data-dir", str(out))
    assert result.returncode == 0, result.stderr
    return out, result


def _manifest(out: Path) -> dict[str, dict]:
    data = json.loads((out / "manifest.json").read_text())
    return {entry["source"]: entry for entry in data["sources"]}


def test_download_writes_files_and_manifest(corpus_mirror, downloaded):
    out, result = downloaded
    entries = _manifest(out)
    assert sorted(entries) == SOURCES
    for name, data in MIRROR.items():
        entry = entries[name.removesuffix(".jsonl")]
        assert (out / name).read_bytes() == data
        assert entry["file"] == name
        assert entry["bytes"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["revision"] == f"local:{corpus_mirror.resolve()}"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", entry["fetched_at"])
    assert entries["lesswrong"]["rows"] == 5
    assert entries["arxiv"]["rows"] == 4  # last line has no newline
    assert entries["aisafety.info"]["rows"] == 4  # the blank line is a row (reported later)
    assert not list(out.glob("*.part"))
    assert "wrote lesswrong.jsonl" in result.stdout


def test_second_run_skips_complete_sources(corpus_mirror, downloaded):
    out, _ = downloaded
    before = {path.name: path.stat().st_mtime_ns for path in out.glob("*.jsonl")}
    result = run(
        "download_alignment_dataset.py", "--source-dir", str(corpus_mirror), "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    for name in SOURCES:
        assert f"{name}: already complete" in result.stdout
    assert {path.name: path.stat().st_mtime_ns for path in out.glob("*.jsonl")} == before


def test_unknown_source_lists_valid_ones(corpus_mirror, tmp_path):
    result = run(
        "download_alignment_dataset.py",
        *("--source-dir", str(corpus_mirror), "--out", str(tmp_path), "--sources", "arxiv,nope"),
    )
    assert_one_line_error(result, "nope", "valid sources: aisafety.info, arxiv, lesswrong")
    assert not (tmp_path / "arxiv.jsonl").exists()  # validated before anything is fetched


def test_missing_source_dir_is_a_clear_error(tmp_path):
    result = run(
        "download_alignment_dataset.py",
        "--source-dir",
        str(tmp_path / "nowhere"),
        "--out",
        str(tmp_path / "out"),
    )
    assert_one_line_error(result, "--source-dir", "not a directory")


def test_hub_unreachable_is_a_clear_error(tmp_path):
    result = run(
        "download_alignment_dataset.py", "--out", str(tmp_path), env={"HF_HUB_OFFLINE": "1"}
    )
    assert_one_line_error(result, "cannot reach the Hugging Face hub", "--source-dir")


def test_interrupted_transfers_are_resumed_or_replaced(corpus_mirror, tmp_path):
    out = tmp_path / "alignment_dataset"
    out.mkdir()
    lesswrong, arxiv, aisafety = (
        MIRROR[f"{n}.jsonl"] for n in ("lesswrong", "arxiv", "aisafety.info")
    )
    # An interrupted copy that is a true prefix of the mirror file: resumed.
    (out / "lesswrong.jsonl.part").write_bytes(lesswrong[:57])
    # A leftover that is not a prefix (corrupted): discarded, the copy restarts.
    (out / "arxiv.jsonl.part").write_bytes(b"garbage" + arxiv[7:30])
    # A truncated final file that no manifest vouches for: replaced.
    (out / "aisafety.info.jsonl").write_bytes(aisafety[:20])
    result = run(
        "download_alignment_dataset.py", "--source-dir", str(corpus_mirror), "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    assert "lesswrong: resuming interrupted copy at 57" in result.stdout
    assert "arxiv: leftover arxiv.jsonl.part does not match the mirror" in result.stdout
    assert "aisafety.info: aisafety.info.jsonl on disk is incomplete" in result.stdout
    for name, data in MIRROR.items():
        assert (out / name).read_bytes() == data
    assert not list(out.glob("*.part"))
    assert sorted(_manifest(out)) == SOURCES

    # A file damaged after a complete run no longer matches its manifest entry: replaced.
    (out / "lesswrong.jsonl").write_bytes(lesswrong[:-10])
    result = run(
        "download_alignment_dataset.py",
        *("--source-dir", str(corpus_mirror), "--out", str(out), "--sources", "lesswrong"),
        *("--revision", "mirror-2024-06"),
    )
    assert result.returncode == 0, result.stderr
    assert (
        "lesswrong.jsonl on disk is incomplete, unrecorded or outdated; replacing it"
        in result.stdout
    )
    assert (out / "lesswrong.jsonl").read_bytes() == lesswrong
    assert _manifest(out)["lesswrong"]["revision"] == "mirror-2024-06"


def test_explore_counts(explored):
    out, result = explored
    frame = pd.read_csv(out / "report" / "sources.csv").set_index("source")
    assert sorted(frame.index) == SOURCES
    lw, ax, ai = frame.loc["lesswrong"], frame.loc["arxiv"], frame.loc["aisafety.info"]
    assert (lw.documents, lw.bad_lines, ax.documents, ax.bad_lines) == (4, 1, 2, 2)
    assert (ai.documents, ai.bad_lines) == (3, 1)
    assert lw.words == 8 + 5 + 5 + 3
    assert ax.words == 7 + 5
    assert ai.words == 11 + 0 + 2
    assert (lw.duplicate_ids, lw.duplicate_urls) == (1, 1)
    assert (ax.duplicate_ids, ax.duplicate_urls) == (0, 0)
    # https://lesswrong.com/1 is in both; sources are scanned in name order, aisafety.info first.
    assert (ai.urls_in_other_sources, lw.urls_in_other_sources) == (0, 1)
    assert (lw.first_date, lw.last_date) == ("2019-06-05", "2021-01-02")
    assert (ax.first_date, ax.last_date) == ("2016-06-21", "2018-11-19")
    assert (ai.first_date, ai.last_date, ai.invalid_dates) == ("2023-05-01", "2023-05-01", 1)
    assert (lw.null_date_published, lw.empty_title, lw.empty_authors) == (1, 1, 1)
    assert (ax.null_summaries, ax.empty_summaries) == (1, 1)
    assert (ai.missing_source_type, ai.missing_summaries) == (3, 3)
    assert (ai.null_title, ai.empty_text, ai.empty_url, ai.empty_date_published) == (1, 1, 1, 1)

    summary = (out / "report" / "summary.md").read_text(encoding="utf-8")
    assert "lesswrong.jsonl:3: invalid JSON" in summary
    assert "arxiv.jsonl:2: not valid UTF-8" in summary
    assert "arxiv.jsonl:3: missing `text`" in summary
    assert "aisafety.info.jsonl:3: blank line" in summary
    assert "Evan Hubinger (3)" in summary
    assert "`karma` (4)" in summary and "`primary_category` (2)" in summary
    assert NON_ASCII_TITLE in summary
    assert "id lw1" in summary and "url https://lesswrong.com/2" in summary
    # Bad lines also reach stderr, with where to find the full list.
    assert "warning: 4 bad line(s) skipped" in result.stderr
    assert "lesswrong.jsonl:3" in result.stderr
    assert re.search(r"lesswrong\s+4 docs", result.stdout)


def test_explore_plots_are_valid_pngs(explored):
    import matplotlib.image

    out, _ = explored
    for name in ("docs_per_year.png", "length_distribution.png"):
        path = out / "report" / name
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        assert path.stat().st_size > 10_000
        image = matplotlib.image.imread(path)
        assert image.shape[0] > 200 and image.shape[1] > 300
        assert image.std() > 0  # something was drawn


def test_explore_again_says_it_replaced_the_report(explored):
    out, _ = explored
    result = run("explore_dataset.py", "--data-dir", str(out), "--sources", "arxiv")
    assert result.returncode == 0, result.stderr
    assert f"replaced previous {out / 'report' / 'summary.md'}" in result.stdout
    assert list(pd.read_csv(out / "report" / "sources.csv").source) == ["arxiv"]
    run("explore_dataset.py", "--data-dir", str(out))  # restore for tests that read it later


def test_grep_counts_and_lists_matches(explored):
    out, _ = explored
    result = run("explore_dataset.py", "--data-dir", str(out), "--grep", r"mesa.?optimi")
    assert result.returncode == 0, result.stderr
    rows = {
        cells[0]: cells[1:]
        for line in result.stdout.splitlines()
        if line.startswith("| ") and (cells := [c.strip() for c in line.strip("|").split("|")])
    }
    # source: documents, matching, share, matches, bad lines
    assert rows["lesswrong"][:2] == ["4", "2"]  # "mesa-optimizers" and "MESA-Optimierung"
    assert rows["arxiv"][:2] == ["2", "0"]
    assert rows["aisafety.info"][:2] == ["3", "1"]  # "mesa optimizer"
    assert rows["**all**"][:2] == ["9", "3"]
    reports = list((out / "report").glob("grep_mesa_optimi_*.md"))
    assert len(reports) == 1
    text = reports[0].read_text(encoding="utf-8")
    assert "[Risks from Learned Optimization](https://lesswrong.com/1)" in text
    assert "Text über **MESA-Optimi**erung" in text  # the match itself is marked
    assert NON_ASCII_TITLE in text
    assert "wrote " in result.stdout


def test_explore_errors_are_one_line(tmp_path, explored):
    assert_one_line_error(
        run("explore_dataset.py", "--data-dir", str(tmp_path / "none")), "make alignment_data"
    )
    assert_one_line_error(
        run("explore_dataset.py", "--data-dir", str(tmp_path)), "make alignment_data"
    )
    out, _ = explored
    assert_one_line_error(
        run("explore_dataset.py", "--data-dir", str(out), "--grep", "(unclosed"),
        "not a valid regular expression",
    )
    assert_one_line_error(
        run("explore_dataset.py", "--data-dir", str(out), "--sources", "youtube"),
        "valid sources: aisafety.info, arxiv, lesswrong",
    )


def test_make_targets_run_the_same_tools(corpus_mirror, tmp_path):
    from tests.conftest import make

    out = tmp_path / "alignment_dataset"
    fetched = make(
        "alignment_data",
        f"ALIGNMENT_SOURCE_DIR={corpus_mirror}",
        f"ALIGNMENT_DIR={out}",
        "ALIGNMENT_SOURCES=lesswrong,arxiv",
    )
    assert sorted(_manifest(out)) == ["arxiv", "lesswrong"], fetched.stdout
    make("explore", f"ALIGNMENT_DIR={out}")
    assert (out / "report" / "summary.md").is_file()
    grepped = make("explore", f"ALIGNMENT_DIR={out}", "GREP=mesa.?optimi|MESA")
    assert "lesswrong" in grepped.stdout
    assert len(list((out / "report").glob("grep_*.md"))) == 1
