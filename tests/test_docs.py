"""The documentation: README.md is a front page, every relative link in README.md and docs/*.md
resolves to a file (and heading) in the repository, and nothing refers to notes outside it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README_MAX_LINES = 250
QUICK_START_BY_LINE = 35  # the first commands a reader runs come before this line

_FENCE = re.compile(r"^\s*(```|~~~)")
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
# Notes that live beside the repository, not in it. Built from pieces so this file does not match.
_OUTSIDE_NOTES = re.compile(
    "|".join([r"\bshared" + "/", "fma" + "-facts", "cluster" + "-notes", r"\bseed" + r"\.md\b"])
)


def doc_files(root: Path = ROOT) -> list[Path]:
    """README.md and every page under docs/."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number from 1, line) outside fenced code blocks, with inline code spans removed."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), start=1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((number, _CODE_SPAN.sub("", line)))
    return lines


def heading_anchors(text: str) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown text (duplicates get -1, -2, ...)."""
    anchors: set[str] = set()
    for _, line in prose_lines(text.replace("`", "")):
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        slug = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-")
        candidate, n = slug, 0
        while candidate in anchors:
            n += 1
            candidate = f"{slug}-{n}"
        anchors.add(candidate)
    return anchors


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    """Every relative link in ``page`` whose file (inside ``root``) or heading does not exist."""
    problems = []
    text = page.read_text(encoding="utf-8")
    for number, line in prose_lines(text):
        for target in _LINK.findall(line):
            if _SCHEME.match(target):  # https:, mailto: ...
                continue
            path_part, _, anchor = target.partition("#")
            where = f"{page.relative_to(root)}:{number}: {target}"
            path = (page.parent / path_part).resolve() if path_part else page
            if not path.is_relative_to(root.resolve()):
                problems.append(f"{where}: points outside the repository")
            elif not path.exists():
                problems.append(f"{where}: no such file")
            elif anchor and path.suffix == ".md" and anchor not in heading_anchors(path.read_text("utf-8")):
                problems.append(f"{where}: no heading with anchor #{anchor} in {path.name}")
    return problems


def tracked_files(root: Path = ROOT) -> list[Path]:
    """The files git tracks (every file but build outputs when there is no git checkout)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "ls-files", "-z"], check=True, capture_output=True
        ).stdout
        return [root / name for name in out.decode().split("\0") if name]
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".venv", "data", "runs", "__pycache__", ".pytest_cache", ".ruff_cache"}
        return [p for p in root.rglob("*") if p.is_file() and not skip & set(p.relative_to(root).parts)]


def mentions_of_outside_notes(files: list[Path], root: Path = ROOT) -> list[str]:
    """``path:line: text`` for each line of a text file naming notes outside the repository."""
    found = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # binary or unreadable: not documentation
        for number, line in enumerate(text.splitlines(), start=1):
            if _OUTSIDE_NOTES.search(line):
                found.append(f"{path.relative_to(root)}:{number}: {line.strip()}")
    return found


def test_readme_is_a_front_page_that_reaches_its_commands_early():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines (at most {README_MAX_LINES}): move detail to a docs/ page"
    )
    first_command = next(i for i, line in enumerate(lines, start=1) if line.startswith("make "))
    assert first_command <= QUICK_START_BY_LINE, f"the first command is on line {first_command}"


def test_every_docs_page_is_linked_from_the_readme():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    pages = sorted((ROOT / "docs").glob("*.md"))
    assert len(pages) >= 8
    unlinked = [p.name for p in pages if f"(docs/{p.name})" not in readme]
    assert not unlinked, f"docs pages not linked from README.md: {unlinked}"


@pytest.mark.parametrize("page", doc_files(), ids=lambda p: p.name)
def test_relative_links_resolve(page):
    assert not broken_links(page), "\n".join(broken_links(page))


def test_link_checker_catches_planted_broken_links(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A page\n\n## Second `part`\n", encoding="utf-8")
    page = tmp_path / "README.md"
    page.write_text(
        "# Front\n\n"
        "[ok](docs/a.md) [ok anchor](docs/a.md#second-part) [self](#front) [web](https://x.org/y)\n"
        "[gone](docs/b.md)\n"
        "[bad anchor](docs/a.md#third)\n"
        "[outside](../elsewhere.md)\n"
        "```\n[in a code block](docs/c.md)\n```\n"
        "`[in code](docs/d.md)`\n",
        encoding="utf-8",
    )
    (tmp_path.parent / "elsewhere.md").write_text("x", encoding="utf-8")
    problems = broken_links(page, root=tmp_path)
    assert [p.split(": ", 1)[0] for p in problems] == ["README.md:4", "README.md:5", "README.md:6"]
    assert "no such file" in problems[0] and "#third" in problems[1] and "outside" in problems[2]


def test_no_tracked_file_refers_to_notes_outside_the_repository():
    files = [p for p in tracked_files() if p.exists()]
    assert any(p.name == "README.md" for p in files)
    found = mentions_of_outside_notes(files)
    assert not found, "bring what users need into docs/ instead:\n" + "\n".join(found)


def test_outside_notes_check_catches_a_planted_reference(tmp_path):
    planted = tmp_path / "x.py"
    planted.write_text("# see " + "shared" + "/fma" + "-facts.md\nok = 1\n", encoding="utf-8")
    clean = tmp_path / "y.md"
    clean.write_text("a shared file system, docs/fma.md\n", encoding="utf-8")
    assert mentions_of_outside_notes([planted, clean], root=tmp_path) == [
        "x.py:1: # see " + "shared" + "/fma" + "-facts.md"
    ]
