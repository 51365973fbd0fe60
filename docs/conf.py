"""Sphinx configuration of the pytest-composable site (``make docs``)."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))

import pytest_composable  # noqa: E402 - after the path above, as conf.py files do

project = "pytest-composable"
author = "pytest-composable contributors"
copyright = "pytest-composable contributors"
release = version = pytest_composable.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.graphviz",
    "composable_reference",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "examples", "_ext"]

# Every cross-reference must resolve (-n on the command line does the same): a link to
# a fixture, option, ini setting, marker keyword or API object that does not exist
# fails the build. Names outside this project (torch, pytest...) are not documented
# here and have no inventory offline, and private modules are named in docstrings on
# purpose: those are the only exceptions.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(torch|pytest|_pytest|pluggy|nn|typing|collections|datetime|dataclasses)(\..*)?"),
    (r"py:.*", r"(DeviceMesh|DeviceLike|ParallelStyle|Inputs|OptimizerFactory|T)"),
    (r"py:mod", r".*\._\w+"),
    (r"py:.*", r"pytest_composable(\.\w+)*\._\w+.*"),
]

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"show-inheritance": False}

graphviz_output_format = "svg"

# Option names keep their two dashes; help texts are shown as written.
smartquotes = False

html_theme = "furo"
html_title = f"pytest-composable {release}"

# A model's forward() would otherwise repeat nn.Module's docstring.
autodoc_inherit_docstrings = False
