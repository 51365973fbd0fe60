"""PyTorch's own ``fully_shard`` tests: pytest-composable against torch's harness, side by side.

Eleven tests of PyTorch's ``test/distributed/_composable/fsdp/test_fully_shard_training.py``
that run on CPU (gloo), each written twice in ``benchmarks/upstream/`` with the same
class and test names, models, sizes, seeds, subtests and checks, 2 ranks on both sides:

* A, ``upstream/fsdp_composable.py``: plain pytest tests on ``composable_world``,
  ``pytest_composable.models`` and ``pytest_composable.parity``;
* B, ``upstream/fsdp_torch_harness.py``: ``unittest`` classes on the harness torch
  installs (``torch.testing._internal.common_fsdp.FSDPTest``: fresh spawned ranks
  for every test), with the smallest patch that lets ``FSDPTest`` run on CPU on
  torch 2.13 (its module docstring says exactly what and why), run with
  ``-p no:composable``, as users without this plugin run them.

Each side is one ``python -m pytest`` session in a scratch directory of its own,
timed from start to exit, interleaved round by round (``_harness.py``); both must
pass all 11 tests. Threads, as each side's users run it: ``OMP_NUM_THREADS`` is
removed from both sides' environment, so B's ranks run with torch's default
(the machine's cores each) and A's with what the plugin gives each rank
(``max(1, cores // ranks)``); the threads each rank had are read back and printed.
Target: A's median wall time at most 0.25x B's.

    python benchmarks/bench_upstream.py [--rounds N] [--upstream-threads N]

``--upstream-threads N`` runs B with ``OMP_NUM_THREADS=N`` instead (not how its users
run it: to see how much of the difference is threads and how much the harness).

About 2 to 5 minutes a round on a 2-core machine, by its load (B is most of it).
Needs ``expecttest`` (torch's harness imports it; in the ``dev`` extra).
"""

from __future__ import annotations

import argparse
import ast
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from _harness import (
    INI,
    Result,
    add_arguments,
    apply_arguments,
    compare,
    pytest_command,
    scratch_dir,
    write,
)

DEFAULT_ROUNDS = 3
TARGET = 0.25
HERE = Path(__file__).resolve().parent / "upstream"
SIDES = {  # directory in the scratch root: (source in upstream/, label, extra pytest args)
    "composable": ("fsdp_composable.py", "pytest-composable (composable_world)", ()),
    "torch_harness": (
        "fsdp_torch_harness.py",
        "torch's FSDPTest, patched for CPU (-p no:composable)",
        ("-p", "no:composable"),
    ),
}
THREADS_FILE = "threads.txt"  # each rank appends its torch.get_num_threads() here


@dataclass(frozen=True)
class UpstreamResult(Result):
    """A :class:`Result` that also reports the tests and each side's threads."""

    notes: str = ""

    def report(self) -> str:
        return super().report() + ("\n" + self.notes if self.notes else "")


def tests_of(source: Path) -> list[str]:
    """``Class::test_name`` of every test method in ``source``, in order."""
    tree = ast.parse(source.read_text())
    return [
        f"{cls.name}::{fn.name}"
        for cls in tree.body
        if isinstance(cls, ast.ClassDef) and cls.name.startswith("Test")
        for fn in cls.body
        if isinstance(fn, ast.FunctionDef) and fn.name.startswith("test_")
    ]


def _threads(directory: Path) -> str:
    path = directory / THREADS_FILE
    counts = Counter(path.read_text().split()) if path.exists() else Counter()
    if not counts:
        return "not recorded"
    return ", ".join(f"{n} ({seen} rank-tests)" for n, seen in sorted(counts.items()))


def measure(rounds: int, upstream_threads: int | None = None) -> Result:
    names = {side: tests_of(HERE / source) for side, (source, _, _) in SIDES.items()}
    if names["composable"] != names["torch_harness"]:
        raise SystemExit(f"the two suites hold different tests: {names}")
    tests = len(names["composable"])
    saved = os.environ.pop("OMP_NUM_THREADS", None)  # torch's default / the plugin's rule
    load_before = os.getloadavg()
    try:
        with scratch_dir() as root:
            sides = []
            for directory, (source, label, args) in SIDES.items():
                cwd = root / directory
                write(cwd / "pytest.ini", INI)
                shutil.copyfile(HERE / source, cwd / "test_fsdp.py")
                command = pytest_command("-q", *args, "test_fsdp.py")
                if upstream_threads is not None and directory == "torch_harness":
                    command = ["env", f"OMP_NUM_THREADS={upstream_threads}", *command]
                    label += f", OMP_NUM_THREADS={upstream_threads}"
                sides.append((label, command, cwd))
            result = compare(
                f"{tests} of PyTorch's fully_shard tests: pytest-composable vs torch's FSDPTest",
                TARGET,
                sides[0],
                sides[1],
                rounds,
                f"{tests} passed",
                env={"BENCH_UPSTREAM_THREADS": THREADS_FILE},
            )
            threads = {side: _threads(root / side) for side in SIDES}
    finally:
        if saved is not None:
            os.environ["OMP_NUM_THREADS"] = saved
    load_after = os.getloadavg()
    notes = [
        f"  tests, both sides ({tests}, all passed in every run): "
        + ", ".join(n.split("::")[1] for n in names["composable"]),
        "  threads per rank (torch.get_num_threads() in each rank, every test of every run), "
        + (
            "OMP_NUM_THREADS unset on both sides:"
            if upstream_threads is None
            else f"OMP_NUM_THREADS unset on A's side, {upstream_threads} on B's:"
        ),
        f"    A: {threads['composable']} (the plugin's max(1, {os.cpu_count()} cores // 2 ranks))",
        f"    B: {threads['torch_harness']} "
        + ("(torch's default)" if upstream_threads is None else "(OMP_NUM_THREADS)"),
        f"  load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f} "
        f"on {os.cpu_count()} CPUs",
    ]
    return UpstreamResult(
        result.name, result.target, result.a, result.b, result.kind, "\n".join(notes)
    )


def _main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser, DEFAULT_ROUNDS)
    parser.add_argument(
        "--upstream-threads",
        type=int,
        default=None,
        help="run B with OMP_NUM_THREADS=N (default: unset, torch's default threads)",
    )
    args = parser.parse_args()
    apply_arguments(args)
    print(measure(args.rounds, args.upstream_threads).report())


if __name__ == "__main__":
    _main()
