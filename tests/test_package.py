"""The sdist and the wheel, built from a copy of this tree with the installed setuptools
(in the dev extra).

Before: the sdist shipped some of ``tests/`` without the conftest files and the
examples they need, so its tests could not run; there was no LICENSE file.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
NOT_SOURCE = shutil.ignore_patterns(
    ".venv*", ".git", "dist", "build", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis"
)
BUILD = """
import sys
from setuptools import build_meta
out = sys.argv[1]  # read first: a build replaces sys.argv
names = [build_meta.build_sdist(out), build_meta.build_wheel(out)]
print("BUILT", *names)
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[set[str], set[str], str]:
    """The sdist's file names (without their top folder), the wheel's, and its METADATA."""
    tree = tmp_path_factory.mktemp("package") / "tree"
    shutil.copytree(ROOT, tree, ignore=NOT_SOURCE)
    out = tree.parent / "dist"
    done = subprocess.run(
        [sys.executable, "-c", BUILD, str(out)],
        cwd=tree,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    built_line = next(line for line in done.stdout.splitlines() if line.startswith("BUILT "))
    sdist_name, wheel_name = built_line.split()[1:]
    with tarfile.open(out / sdist_name) as sdist:
        sdist_files = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    with zipfile.ZipFile(out / wheel_name) as wheel:
        wheel_files = set(wheel.namelist())
        metadata_name = next(n for n in wheel_files if n.endswith(".dist-info/METADATA"))
        metadata = wheel.read(metadata_name).decode()
    return sdist_files, wheel_files, metadata


def test_sdist_carries_everything_the_tests_need(built: tuple[set[str], set[str], str]) -> None:
    sdist_files = built[0]
    needed = {"LICENSE", "CONTRIBUTING.md", "README.md", "conftest.py", "pyproject.toml"}
    for folder in ("tests", "examples"):
        needed |= {
            str(p.relative_to(ROOT))
            for p in (ROOT / folder).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts
        }
    assert needed <= sdist_files, sorted(needed - sdist_files)
    assert not [name for name in sdist_files if name.endswith(".pyc")]


def test_wheel_has_the_license_and_its_metadata(built: tuple[set[str], set[str], str]) -> None:
    _, wheel_files, text = built
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in wheel_files)
    assert not [name for name in wheel_files if name.startswith(("tests/", "examples/"))]
    # Every module of the package, the distributed subpackage included (a wheel once
    # shipped without it).
    modules = {str(p.relative_to(ROOT)) for p in (ROOT / "pytest_composable").rglob("*.py")}
    assert modules <= wheel_files, sorted(modules - wheel_files)
    metadata = Parser().parsestr(text)
    assert metadata["License-Expression"] == "BSD-3-Clause"
    assert metadata.get_all("License-File") == ["LICENSE"]
    assert metadata.get_all("Project-URL")
    classifiers = metadata.get_all("Classifier") or []
    assert "Programming Language :: Python :: 3.10" in classifiers
    description = metadata.get_payload()
    assert isinstance(description, str)
    assert "CONTRIBUTING.md" in description
    for section in ("## Working on this repository", "## Benchmarks", "What the tests simulate"):
        assert section not in description
    assert "pip install pytest-composable" not in description
