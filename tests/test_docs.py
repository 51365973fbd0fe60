"""The documentation keeps its promises: links resolve, examples are real files that run,
the README is a short front door that links every page, the changelog is well formed.

``make docs`` builds the site with warnings as errors and every cross-reference checked;
``make docs-examples`` runs every example the site includes. These tests are the checks
that need no Sphinx: they run in ``make test``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest

import pytest_composable
from pytest_composable.marker import MarkerError, read_marker

ROOT = Path(__file__).parent.parent
DOCS = ROOT / "docs"
EXAMPLES = DOCS / "examples"
README = ROOT / "README.md"
CHANGELOG = ROOT / "CHANGELOG.md"


def pages() -> list[Path]:
    """The site's pages (Markdown and reST), not examples or build output."""
    found = [*DOCS.rglob("*.md"), *DOCS.rglob("*.rst")]
    return sorted(p for p in found if not {"_build", "examples", "_ext"} & set(p.parts))


def markdown_files() -> list[Path]:
    return [README, CHANGELOG, ROOT / "CONTRIBUTING.md", *(p for p in pages() if p.suffix == ".md")]


FENCE = re.compile(
    r"^(?P<fence>```+|~~~+)(?P<info>[^\n]*)\n(?P<body>.*?)^(?P=fence)\s*$", re.M | re.S
)
LINK = re.compile(r"(?<!!)\[[^\]\n]*\]\((?P<target>[^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(?P<title>.+?)\s*#*\s*$", re.M)


def without_code(text: str) -> str:
    """Markdown text with its fenced blocks and inline code removed (links there are code)."""
    text = FENCE.sub("", text)
    return re.sub(r"`[^`\n]*`", "", text)


def slug(title: str) -> str:
    """The anchor GitHub and MyST (``myst_heading_anchors``) give a heading."""
    title = re.sub(r"`([^`]*)`", r"\1", title).strip().lower()
    title = re.sub(r"[^\w\- ]", "", title)
    return title.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(m["title"]) for m in HEADING.finditer(FENCE.sub("", path.read_text()))}


def test_every_relative_link_and_anchor_resolves() -> None:
    broken = []
    for path in markdown_files():
        for match in LINK.finditer(without_code(path.read_text())):
            target = match["target"]
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            resolved = (path.parent / file_part).resolve() if file_part else path
            if not resolved.exists():
                broken.append(f"{path.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                broken.append(f"{path.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_readme_is_a_short_front_door_for_a_package_index() -> None:
    text = README.read_text()
    assert len(text.splitlines()) < 150
    # The README is the package's long description: no Sphinx or MyST syntax.
    for sphinx_only in ("{doc}", "{fixture}", "{option}", "```{", ":::", ".. "):
        assert sphinx_only not in text, sphinx_only
    # The two commands, install, and a link to the contributors' guide.
    for promise in ("make examples", "make test", "pip install", "CONTRIBUTING.md"):
        assert promise in text, promise


def test_readme_links_every_page_of_the_site() -> None:
    linked = {
        (README.parent / m["target"].partition("#")[0]).resolve()
        for m in LINK.finditer(without_code(README.read_text()))
    }
    wanted = [
        page
        for page in pages()
        if page.parent != DOCS
        and (page.parent.name != "tutorial" or page.stem == "index")
        and (page.stem != "index" or page.parent.name == "tutorial")
    ]
    missing = [str(page.relative_to(ROOT)) for page in wanted if page.resolve() not in linked]
    assert not missing, f"README.md does not link: {missing}"
    assert CHANGELOG.resolve() in linked


def readme_python_blocks() -> list[str]:
    return [m["body"] for m in FENCE.finditer(README.read_text()) if m["info"].strip() == "python"]


@pytest.mark.parametrize("block", readme_python_blocks(), ids=lambda b: b.splitlines()[0])
def test_readme_examples_are_excerpts_of_example_files_that_run(block: str) -> None:
    """Each README example names the file under docs/examples/ it comes from (which
    ``make docs-examples`` runs), and every line of it is in that file, in order."""
    first, *lines = block.splitlines()
    assert first.startswith("# docs/examples/"), "a README example names its example file"
    source = (ROOT / first[2:].strip()).read_text().splitlines()
    position = 0
    for line in (line for line in lines if line.strip()):
        assert line in source[position:], f"{line!r} is not in {first[2:]} (in this order)"
        position = source.index(line, position) + 1


INCLUDE = re.compile(r"(?:```\{literalinclude\}|\.\. literalinclude::)\s+(?P<path>\S+)")


def test_every_included_example_exists_and_every_example_is_included() -> None:
    included = set()
    for page in pages():
        for match in INCLUDE.finditer(page.read_text()):
            target = (page.parent / match["path"]).resolve()
            assert target.is_file(), f"{page.relative_to(ROOT)} includes missing {match['path']}"
            included.add(target)
    examples = {p.resolve() for p in EXAMPLES.rglob("*.py") if "__pycache__" not in p.parts}
    orphans = sorted(str(p.relative_to(ROOT)) for p in examples - included)
    assert not orphans, f"examples no page shows: {orphans}"


class _Marked:
    """Just enough of a pytest node for :func:`read_marker`."""

    def __init__(self, marks: list[pytest.Mark]) -> None:
        self.marks = marks

    def iter_markers(self, name: str) -> list[pytest.Mark]:
        return [mark for mark in self.marks if mark.name == name]


def page_python_blocks() -> list[tuple[str, str]]:
    blocks = []
    for page in pages():
        text = page.read_text()
        for match in FENCE.finditer(text):
            if match["info"].strip() == "python":
                blocks.append((str(page.relative_to(ROOT)), match["body"]))
        for match in re.finditer(
            r"^\.\. code-block:: python\n\n(?P<body>(?:   .*\n|\n)+)", text, re.M
        ):
            body = "\n".join(line[3:] for line in match["body"].splitlines())
            blocks.append((str(page.relative_to(ROOT)), body))
    return blocks


@pytest.mark.parametrize(("page", "block"), page_python_blocks())
def test_python_fragments_in_pages_are_valid(page: str, block: str) -> None:
    """Whole examples are included from docs/examples/ (and run there); what a page
    writes inline is a fragment, such as a marker: it must be valid Python, and a
    ``composable`` marker must be one the plugin accepts."""
    source = block
    if block.rstrip().splitlines()[-1].lstrip().startswith("@"):
        source += "def decorated():\n    pass\n"
    tree = ast.parse(source, filename=page)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "composable"
            and ast.unparse(node.func.value) == "pytest.mark"
        ):
            kwargs: dict[str, Any] = {
                kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg
            }
            try:
                read_marker(_Marked([pytest.mark.composable(**kwargs).mark]))
            except MarkerError as error:
                pytest.fail(f"{page}: {ast.unparse(node)}: {error}")


def test_changelog_follows_keep_a_changelog_and_names_this_version() -> None:
    text = CHANGELOG.read_text()
    assert text.startswith("# Changelog\n")
    sections = re.findall(r"^## \[(?P<version>[^\]]+)\](?: - (?P<date>\S+))?$", text, re.M)
    assert sections[0] == ("Unreleased", "")
    released = sections[1:]
    assert released, "at least one released version"
    for version, date in released:
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), version
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", date), (version, date)
    assert released[0][0] == pytest_composable.__version__
    kinds = set(re.findall(r"^### (\w+)$", text, re.M))
    assert kinds <= {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}


def test_the_version_is_kept_in_one_place() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"]
    assert "version" in project["project"]["dynamic"]
    dynamic = project["tool"]["setuptools"]["dynamic"]["version"]
    assert dynamic == {"attr": "pytest_composable.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", pytest_composable.__version__)
