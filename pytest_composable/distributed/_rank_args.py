"""The command line and environment of a rank process (torch-free, pure).

A rank is ``python -m pytest`` with the session's own arguments, so it
collects the same tests with the same options, conftests and plugins. What
would make it write one of the main session's files is made per-rank (in the
pool's private directory) or switched off:

* ``--basetemp`` and the cache directory: per-rank;
* ``--log-file`` (option or ini), ``--report-log``, ``--debug``: per-rank;
* ``--junitxml``: off (the main process writes the merged results);
* pytest-cov: off on the ranks (``--no-cov``), and coverage's own environment
  (``COVERAGE_FILE``, ``COVERAGE_PROCESS_START``, pytest-cov's ``COV_CORE_*``)
  is removed, so no rank touches the main session's data file;
* pytest-xdist: ``-n 0`` (a rank is never a controller);
* output: ``--capture=tee-sys`` unless the user switched capturing off, so what
  a rank printed before dying is in its log, and so in the report.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["RankOptions", "rank_arguments", "rank_environment"]

_COVERAGE_ENV = ("COVERAGE_FILE", "COVERAGE_PROCESS_START", "COVERAGE_RCFILE")


class RankOptions:
    """What of the main session's configuration decides a rank's arguments."""

    def __init__(
        self,
        args: Sequence[str],
        plugins: frozenset[str],
        option: Any,
        ini_log_file: str = "",
    ) -> None:
        self.args = [str(a) for a in args]
        self.plugins = plugins
        self.option = option
        self.ini_log_file = ini_log_file

    def get(self, name: str) -> Any:
        return getattr(self.option, name, None)


def rank_arguments(options: RankOptions, directory: Path, rank: int) -> list[str]:
    """The session's own arguments, then what keeps rank ``rank`` off the main session's files."""
    here = directory / f"rank{rank}"
    args = [*options.args, "-q", f"--basetemp={here / 'tmp'}"]
    if "cacheprovider" in options.plugins:
        args += ["-o", f"cache_dir={here / 'cache'}"]
    if options.get("log_file") or options.ini_log_file:
        args += [f"--log-file={here / 'log.txt'}"]
    if options.get("report_log"):
        args += [f"--report-log={here / 'report-log.jsonl'}"]
    if options.get("debug"):
        args += [f"--debug={here / 'pytestdebug.log'}"]
    if options.get("xmlpath"):
        args += ["--junitxml="]
    if "_cov" in options.plugins or "pytest_cov" in options.plugins:
        args += ["--no-cov"]
    if "xdist" in options.plugins or "xdist.plugin" in options.plugins:
        args += ["-n", "0"]
    if options.get("capture") not in ("no", "tee-sys"):
        args += ["--capture=tee-sys"]
    return args


def rank_environment(
    environ: Mapping[str, str], extra: Mapping[str, str], directory: Path, rank: int
) -> dict[str, str]:
    """The main process's environment for rank ``rank``, without what would make the rank
    write the main session's coverage data or think it was launched by torchrun."""
    env = {
        key: value
        for key, value in environ.items()
        if key not in _COVERAGE_ENV and not key.startswith("COV_CORE_")
    }
    env.pop("TORCHELASTIC_RUN_ID", None)
    if "COVERAGE_FILE" in environ:
        env["COVERAGE_FILE"] = str(directory / f"rank{rank}" / "coverage")
    env.update(extra)
    return env
