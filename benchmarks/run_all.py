"""Run the pytest-composable benchmarks and print a summary table.

* ``bench_torch_free.py``: a torch-free 200-test suite, plugin installed vs
  ``-p no:composable`` (target <= 1.05);
* ``bench_collect.py``: collecting 1,000 ``composable_model`` items vs the same
  parametrization by hand (target <= 1.2);
* ``bench_run.py``: running those 1,000 items (target <= 1.05);
* ``bench_distributed.py``: 20 ``fully_shard`` tests vs ``MultiProcContinuousTest``,
  ``OMP_NUM_THREADS`` unset on both sides (<= 0.45), and at ``OMP_NUM_THREADS=1`` on
  the harness's side (shown, no target);
* ``bench_warm.py``: warm rank start: one world test vs one plain torch test
  (<= 1.25), 20 ``fully_shard`` tests vs ``MultiProcContinuousTest`` (<= 0.6),
  a rank crash's restart (<= 0.5 s), time per trivial world test (<= 3 ms);
* ``bench_fail_fast.py``: one rank fails while the other waits in a collective: the
  time added to the failed report (<= 3 s, at a 120 s deadline);
* ``bench_mesh.py``: per world test after the first, a kept 2x2 mesh vs a 1-D world
  of 4 (<= 1.05);
* ``bench_upstream.py``: 11 of PyTorch's own ``fully_shard`` training tests ported to
  the plugin vs the same tests on torch's ``FSDPTest`` (patched for CPU), each at the
  threads its users run it with (<= 0.25; about 9 minutes).

Exit status 1 if any target is missed.

Each benchmark interleaves its two sides and compares median wall times; see
``_harness.py``. ``--rounds N`` overrides every benchmark's default;
``--no-bytecode-cache`` times runs that compile every module from source
(by default the runs use ``__pycache__``, as an installed package does).

    python benchmarks/run_all.py [--rounds N] [--no-bytecode-cache]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import bench_collect
import bench_distributed
import bench_fail_fast
import bench_mesh
import bench_run
import bench_torch_free
import bench_upstream
import bench_warm
from _harness import Result, add_arguments, apply_arguments

BENCHMARKS: tuple[tuple[Callable[[int], Result | list[Result]], int], ...] = (
    (bench_torch_free.measure, bench_torch_free.DEFAULT_ROUNDS),
    (bench_collect.measure, bench_collect.DEFAULT_ROUNDS),
    (bench_run.measure, bench_run.DEFAULT_ROUNDS),
    (bench_distributed.measure, bench_distributed.DEFAULT_ROUNDS),
    (bench_warm.measure_all, bench_warm.DEFAULT_ROUNDS),
    (bench_fail_fast.measure, bench_fail_fast.DEFAULT_ROUNDS),
    (bench_mesh.measure, bench_mesh.DEFAULT_ROUNDS),
    (bench_upstream.measure, bench_upstream.DEFAULT_ROUNDS),
)


def table(results: list[Result]) -> str:
    header = ("benchmark", "A median", "B median", "measure", "value", "target", "CPU A/B", "")
    rows = [
        (
            r.name,
            f"{r.a.wall_median:.4f} s",
            f"{r.b.wall_median:.4f} s",
            r.metric,
            f"{r.ratio:.3f}",
            r.target_text,
            f"{r.cpu_ratio:.3f}",
            "met" if r.met else "MISSED",
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in (header, *rows)
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser, None)
    args = parser.parse_args()
    apply_arguments(args)
    results = []
    for measure, default_rounds in BENCHMARKS:
        measured = measure(args.rounds or default_rounds)
        for result in measured if isinstance(measured, list) else [measured]:
            print(result.report(), flush=True)
            results.append(result)
    print()
    print(table(results))
    sys.exit(0 if all(r.met for r in results) else 1)


if __name__ == "__main__":
    main()
