"""The reference pages, generated from the plugin itself so that they cannot drift.

Directives (used by the ``.rst`` pages under ``docs/reference/``):

* ``composable-options``: every ``--composable-*`` command-line option, as pytest
  registered it: the plugin's own ``pytest_addoption`` hooks run on a real pytest
  parser, in a real (empty) pytest session, and each option's help text, metavar,
  environment variable and ini setting are read back from there.
* ``composable-ini``: every ``composable_*`` ini setting, from the same parser.
* ``composable-fixtures``: every fixture of every ``pytest_composable`` module that
  is registered as a pytest plugin in that session, with its scope, the fixtures it
  requests and its docstring (what ``pytest --fixtures`` prints).
* ``composable-marker``: the ``composable`` marker's keywords, from
  ``pytest_composable.marker`` (its module docstring, ``MARKER_HELP`` and the
  fields of ``MarkerOptions``).

Object types, each with its role, so the narrative pages link into the reference and
a link to something that does not exist fails the build (``nitpicky``):
``fixture`` (``:fixture:``), ``confval`` (ini settings, ``:confval:``) and
``markerkw`` (``:markerkw:``), beside Sphinx's own ``option`` and ``envvar``.

Checks, each a warning (an error under ``-W``): an option whose help does not state
its precedence (which ends with the default), a fixture without a docstring, a marker keyword the
marker's docstring does not explain, and a public name (``__all__`` of the public
modules, and every hook) that no reference page documents.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import io
import re
import tempfile
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from _pytest.fixtures import getfixturemarker
from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)

PLUGIN_PREFIX = "pytest_composable"
OPTION_PREFIX = "--composable-"
INI_PREFIX = "composable_"
ENV_NAME = re.compile(r"\bPYTEST_COMPOSABLE_[A-Z0-9_]+\b")
# The modules whose public names (``__all__``) must all be in the reference.
PUBLIC_MODULES = (
    "pytest_composable",
    "pytest_composable.models",
    "pytest_composable.parity",
)
HOOKSPECS = "pytest_composable.hookspecs"


@dataclass(frozen=True)
class Option:
    names: tuple[str, ...]
    dest: str
    metavar: str
    help: str
    env: tuple[str, ...]
    ini: str | None


@dataclass(frozen=True)
class Ini:
    name: str
    type: str
    help: str
    option: str | None


@dataclass(frozen=True)
class Fixture:
    name: str
    module: str
    scope: str
    autouse: bool
    requests: tuple[str, ...]
    doc: str


@dataclass(frozen=True)
class Surface:
    options: tuple[Option, ...]
    inis: tuple[Ini, ...]
    fixtures: tuple[Fixture, ...]


class _Grab:
    """A pytest plugin that keeps the configured session's config."""

    config: pytest.Config | None = None

    @pytest.hookimpl(trylast=True)
    def pytest_configure(self, config: pytest.Config) -> None:
        self.config = config


@functools.cache
def plugin_surface() -> Surface:
    """Run an empty pytest session with the installed plugin and read back what it
    registered: options, ini settings and fixtures."""
    grab = _Grab()
    with tempfile.TemporaryDirectory() as tmp:
        ini = Path(tmp) / "pytest.ini"
        ini.write_text("[pytest]\n")
        args = ["--collect-only", "-q", "-p", "no:cacheprovider"]
        args += ["--rootdir", tmp, "-c", str(ini), tmp]
        with contextlib.redirect_stdout(io.StringIO()) as out:
            code = pytest.main(args, plugins=[grab])
    config = grab.config
    if config is None or code not in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        raise RuntimeError(f"an empty pytest session failed ({code}):\n{out.getvalue()}")
    if config.pluginmanager.get_plugin("composable") is None:
        raise RuntimeError("the composable plugin is not installed (pip install -e .)")
    return Surface(_options(config), _inis(config), _fixtures(config))


def _options(config: pytest.Config) -> tuple[Option, ...]:
    parser = config._parser
    inis = {name for name in parser._inidict if name.startswith(INI_PREFIX)}
    found: list[Option] = []
    for group in parser._groups:
        for argument in group.options:
            names = tuple(argument.names())
            if not any(name.startswith(OPTION_PREFIX) for name in names):
                continue
            attrs = argument.attrs()
            help_text = " ".join(str(attrs.get("help", "")).split())
            dest = str(attrs.get("dest") or argument.dest)
            found.append(
                Option(
                    names=names,
                    dest=dest,
                    metavar=str(attrs.get("metavar") or ""),
                    help=help_text,
                    env=tuple(dict.fromkeys(ENV_NAME.findall(help_text))),
                    ini=dest if dest in inis else None,
                )
            )
    place = _option_modules(config)
    return tuple(sorted(found, key=lambda option: place.get(option.names[0], len(place))))


def _inis(config: pytest.Config) -> tuple[Ini, ...]:
    parser = config._parser
    by_dest = {option.ini: option.names[0] for option in _options(config) if option.ini}
    found = []
    for name, value in parser._inidict.items():
        if not name.startswith(INI_PREFIX):
            continue
        help_text, kind = value[0], value[1]
        found.append(
            Ini(name, str(kind or "string"), " ".join(help_text.split()), by_dest.get(name))
        )
    return tuple(sorted(found, key=lambda ini: ini.name))


def _in_plugin_order(config: pytest.Config, modules: list[Any]) -> list[Any]:
    """The plugin's modules, the main one (registered as ``composable``) first."""
    main = config.pluginmanager.get_plugin("composable")
    return sorted(modules, key=lambda m: (m is not main, m.__name__))


def _option_modules(config: pytest.Config) -> dict[str, int]:
    """Each ``--composable-*`` option's place by the plugin module that adds it: each
    module's own ``pytest_addoption`` run on a fresh parser."""
    modules = [
        plugin
        for plugin in config.pluginmanager.get_plugins()
        if isinstance(plugin, types.ModuleType)
        and plugin.__name__.startswith(PLUGIN_PREFIX)
        and hasattr(plugin, "pytest_addoption")
    ]
    place: dict[str, int] = {}
    for index, module in enumerate(_in_plugin_order(config, modules)):
        parser = pytest.Parser(_ispytest=True)
        module.pytest_addoption(parser)
        for group in parser._groups:
            for argument in group.options:
                for name in argument.names():
                    place.setdefault(name, index)
    return place


def _fixtures(config: pytest.Config) -> tuple[Fixture, ...]:
    found: dict[str, Fixture] = {}
    plugins = [
        plugin
        for plugin in config.pluginmanager.get_plugins()
        if isinstance(plugin, types.ModuleType) and plugin.__name__.startswith(PLUGIN_PREFIX)
    ]
    for module in _in_plugin_order(config, plugins):
        for attribute, value in vars(module).items():
            marker = getfixturemarker(value)
            if marker is None:
                continue
            name = marker.name or getattr(value, "name", None) or attribute
            signature = inspect.signature(value)
            found[name] = Fixture(
                name=name,
                module=module.__name__,
                scope=str(marker.scope),
                autouse=bool(marker.autouse),
                requests=tuple(p for p in signature.parameters if p != "request"),
                doc=inspect.getdoc(value) or "",
            )
    return tuple(found.values())


# --- reST generation -------------------------------------------------------------------


def escape(text: str) -> str:
    """Plain text (an option's help) made safe to embed in reST: its markup characters
    are escaped, so ``2**64`` stays ``2**64``."""
    return re.sub(r"([\\*`|_\[\]<>])", r"\\\1", text)


def indent(text: str, prefix: str = "   ") -> list[str]:
    return [prefix + line if line.strip() else "" for line in text.splitlines()]


class _Generated(SphinxDirective):
    """A directive whose content is reST generated at build time."""

    has_content = False

    def lines(self) -> list[str]:
        raise NotImplementedError

    def run(self) -> list[nodes.Node]:
        source = self.get_source_info()[0]
        content = StringList()
        for line in self.lines():
            content.append(line, source)
        container = nodes.container()
        self.state.nested_parse(content, self.content_offset, container)
        return list(container.children)


class OptionsDirective(_Generated):
    def lines(self) -> list[str]:
        options = plugin_surface().options
        out = [
            ".. list-table:: Every option at a glance",
            "   :header-rows: 1",
            "   :widths: 35 40 25",
            "",
            "   * - command line",
            "     - environment variable",
            "     - ini setting",
        ]
        for option in options:
            env = ", ".join(f":envvar:`{name}`" for name in option.env) or "(none)"
            ini = f":confval:`{option.ini}`" if option.ini else "(none)"
            out += [f"   * - :option:`{option.names[0]}`", f"     - {env}", f"     - {ini}"]
        out.append("")
        for option in options:
            if "precedence" not in option.help.lower():
                # The precedence chain ends with the default: "... > the ini setting > 2".
                logger.warning(
                    "composable-options: the help of %s does not state its precedence "
                    "(which ends with its default)",
                    option.names[0],
                    location=self.get_location(),
                )
            signature = ", ".join(f"{name} {option.metavar}".strip() for name in option.names)
            out += [f".. option:: {signature}", "", *indent(escape(option.help)), ""]
            where = []
            if option.env:
                where.append(
                    "Environment variable: " + ", ".join(f":envvar:`{e}`" for e in option.env)
                )
            if option.ini:
                where.append(f"ini setting: :confval:`{option.ini}`")
            if where:
                out += [*indent(". ".join(where) + "."), ""]
            for env in option.env:
                out += [
                    f".. envvar:: {env}",
                    "",
                    f"   The environment variable of :option:`{option.names[0]}`: the same "
                    "values, below the command line and above the ini setting in precedence.",
                    "",
                ]
        return out


class IniDirective(_Generated):
    def lines(self) -> list[str]:
        out: list[str] = []
        for ini in plugin_surface().inis:
            out += [f".. confval:: {ini.name}", "", *indent(escape(ini.help)), ""]
            facts = [f"Type: ``{ini.type}``"]
            if ini.option:
                facts.append(f"command-line option: :option:`{ini.option}`")
            out += [*indent(". ".join(facts) + "."), ""]
        return out


class FixturesDirective(_Generated):
    def lines(self) -> list[str]:
        fixtures = plugin_surface().fixtures
        names = {fixture.name for fixture in fixtures}
        out = [
            ".. list-table:: Every fixture at a glance",
            "   :header-rows: 1",
            "   :widths: 30 12 58",
            "",
            "   * - fixture",
            "     - scope",
            "     - what it gives",
        ]
        for fixture in fixtures:
            first = fixture.doc.split("\n\n", 1)[0].replace("\n", " ")
            out += [
                f"   * - :fixture:`{fixture.name}`",
                f"     - {fixture.scope}",
                f"     - {first}",
            ]
        out.append("")
        for fixture in fixtures:
            if not fixture.doc:
                logger.warning(
                    "composable-fixtures: fixture %s has no docstring",
                    fixture.name,
                    location=self.get_location(),
                )
            requests = ", ".join(
                f":fixture:`{name}`" if name in names else f"``{name}``"
                for name in fixture.requests
            )
            facts = [
                f":Scope: {fixture.scope}" + (", autouse" if fixture.autouse else ""),
                f":Defined in: ``{fixture.module}``",
            ]
            if requests:
                facts.append(f":Requests: {requests}")
            out += [
                f".. fixture:: {fixture.name}",
                "",
                *indent(fixture.doc),
                "",
                *indent("\n".join(facts)),
                "",
            ]
        return out


class MarkerDirective(_Generated):
    def lines(self) -> list[str]:
        marker = importlib.import_module("pytest_composable.marker")
        options = marker.MarkerOptions
        doc = inspect.getdoc(marker) or ""
        # The docstring's summary line is about the module; the rest is about the marker.
        explained = doc.split("\n\n", 1)[-1]
        out = [
            "What ``pytest --markers`` prints for it:",
            "",
            ".. code-block:: text",
            "",
            f"   @pytest.mark.{marker.MARKER_HELP}",
            "",
            *explained.splitlines(),
            "",
        ]
        annotations: dict[str, Any] = dict(options.__annotations__)
        defaults: dict[str, Any] = dict(options._field_defaults)
        for field in options._fields:
            if f"``{field}=" not in doc:
                logger.warning(
                    "composable-marker: keyword %s is not explained in the docstring of "
                    "pytest_composable.marker",
                    field,
                    location=self.get_location(),
                )
            out += [
                f".. markerkw:: {field}",
                "",
                f"   Read as ``{_annotation(annotations.get(field))}``; "
                f"``{defaults.get(field)!r}`` where no marker sets it.",
                "",
            ]
        return out


def _annotation(value: Any) -> str:
    """A field's annotation as written (a string, or a ``ForwardRef`` of one)."""
    return str(getattr(value, "__forward_arg__", value))


# --- the public API is documented ------------------------------------------------------


def public_names() -> list[str]:
    names: list[str] = []
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        names += [f"{module_name}.{name}" for name in getattr(module, "__all__", [])]
    hooks = importlib.import_module(HOOKSPECS)
    names += [
        f"{HOOKSPECS}.{name}"
        for name, value in vars(hooks).items()
        if name.startswith("pytest_") and callable(value)
    ]
    return names


def check_public_api(app: Sphinx, env: BuildEnvironment) -> None:
    documented = set(env.get_domain("py").objects)  # type: ignore[attr-defined]
    for name in public_names():
        if name not in documented:
            logger.warning(
                "public name %s is not documented in the reference (docs/reference/api.rst)",
                name,
            )
    std = env.get_domain("std")
    fixtures = {name for (kind, name) in std.objects if kind == "fixture"}  # type: ignore[attr-defined]
    for fixture in plugin_surface().fixtures:
        if fixture.name not in fixtures:
            logger.warning("fixture %s is not documented in the reference", fixture.name)


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_object_type("fixture", "fixture", indextemplate="pair: %s; fixture", objname="fixture")
    app.add_object_type(
        "confval", "confval", indextemplate="pair: %s; ini setting", objname="ini setting"
    )
    app.add_object_type(
        "markerkw",
        "markerkw",
        indextemplate="pair: %s; marker keyword",
        objname="marker keyword",
    )
    app.add_directive("composable-options", OptionsDirective)
    app.add_directive("composable-ini", IniDirective)
    app.add_directive("composable-fixtures", FixturesDirective)
    app.add_directive("composable-marker", MarkerDirective)
    app.connect("env-check-consistency", check_public_api)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
