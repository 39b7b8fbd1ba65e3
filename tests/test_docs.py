"""The README is a front page, and every number in its results block and in docs/results.md
is what the committed metrics files give (issue 39)."""

import re
import shutil
from pathlib import Path

import pytest

from vla_pipeline.errors import PipelineError
from vla_pipeline.report.docs import (HEADLINE_BEGIN, HEADLINE_BLOCK, HEADLINE_END, RESULTS, readme_headline,
                                      stale_docs, update_docs)

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def docs_copy(tmp_path: Path) -> Path:
    """A repository root in tmp_path: its own README.md and docs/, the committed data and params."""
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copy(ROOT / "README.md", root / "README.md")
    shutil.copytree(ROOT / "docs", root / "docs")
    (root / "data").symlink_to(ROOT / "data")
    (root / "params.yaml").symlink_to(ROOT / "params.yaml")
    return root


def test_the_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines (at most 250: move the rest to docs/)"


def test_every_generated_block_is_what_the_metrics_give():
    assert stale_docs(ROOT) == [], "regenerate with `python -m stages.tools docs`"


@pytest.fixture(scope="module")
def headline() -> str:
    return readme_headline(ROOT / "data" / "metrics")


def test_a_number_edited_in_the_readme_block_is_named(tmp_path, headline):
    root = docs_copy(tmp_path)
    assert stale_docs(root) == []
    readme = root / "README.md"
    text = readme.read_text(encoding="utf-8")
    start, end = text.index(HEADLINE_BEGIN), text.index(HEADLINE_END)
    row = next(line for line in text[start:end].splitlines() if line.startswith("| SFT |"))
    number = re.search(r"\d\.\d{3}", row).group(0)
    edited = row.replace(number, f"{float(number) + 0.001:.3f}", 1)
    readme.write_text(text.replace(row, edited), encoding="utf-8")
    assert stale_docs(root) == [HEADLINE_BLOCK]
    assert update_docs(root) == [readme]  # regenerating restores it
    assert readme.read_text(encoding="utf-8") == text and stale_docs(root) == []


def test_an_edited_or_missing_results_page_is_named(tmp_path):
    root = docs_copy(tmp_path)
    page = root / RESULTS
    page.write_text(page.read_text(encoding="utf-8").replace("0.957", "0.958", 1), encoding="utf-8")
    assert stale_docs(root) == [RESULTS]
    page.unlink()
    assert stale_docs(root) == [RESULTS]
    (root / "README.md").write_text("# no generated block\n", encoding="utf-8")
    assert stale_docs(root) == [HEADLINE_BLOCK, RESULTS]
    with pytest.raises(PipelineError, match="generated:headline"):
        update_docs(root)


def test_the_headline_names_the_ceiling_sft_and_each_chains_final_round(headline):
    rows = [line for line in headline.splitlines() if line.startswith("| ")]
    labels = [row.split("|")[1].strip() for row in rows[1:]]
    assert labels[0].startswith("scripted expert") and labels[1] == "SFT"
    assert any("ACPPO `r05` (final)" in label for label in labels)
    assert any("iRe-VLA `ire-sl2` (final)" in label for label in labels)
    assert any("CO-RFT `corft`" in label for label in labels)
    assert re.search(r"\| \*\*0\.\d{3} \[0\.\d\d, 0\.\d\d\]\*\* \| \*\*\d+\.\d\*\* \|", headline)


def test_every_relative_link_points_to_a_file():
    missing = []
    for md in markdown_files():
        for target in LINK.findall(md.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue  # a URL or an anchor in the same file
            path = (md.parent / target.split("#")[0]).resolve()
            if not path.exists():
                missing.append(f"{md.relative_to(ROOT)}: {target}")
    assert missing == []
