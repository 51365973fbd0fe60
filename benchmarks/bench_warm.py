"""Warm rank start: the edit-run-read loop of a distributed developer, side by side.

Four measures, each from interleaved rounds (see ``_harness.py``), medians:

* one trivial world test (one ``all_reduce``, world size 2, gloo, CPU) as a whole
  ``pytest`` session, against a one-test session that imports torch and runs one
  plain test: ratio of wall times, target <= 1.25;
* the 20 ``fully_shard`` tests of ``bench_distributed.py`` against the same
  bodies under ``MultiProcContinuousTest``: ratio, target <= 0.6 (needs
  ``expecttest``, in the ``dev`` extra);
* a session whose first world test crashes a rank (``os._exit``) and whose 10
  following world tests pass, against the same session without the crash: the
  restart's cost, A - B, target <= 0.5 s;
* the time per trivial world test (one ``all_reduce``) in a session of 101, from
  the first test's end to the last's over 100: target <= 3 ms (a plain test's,
  measured the same way, is shown beside it).

``--pss`` also prints the ranks' combined proportional set size (PSS) for a
world of 4, warm against cold (not a target: a figure for the README).

    python benchmarks/bench_warm.py [--rounds N] [--pss]

About 6 minutes on a 2-core machine (``make benchmarks-warm``; ``make benchmarks``
runs it after the other benchmarks).

Exit status 0 when every target is met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _harness import (
    Result,
    Timings,
    _environment,
    add_arguments,
    apply_arguments,
    compare,
    interleave,
    pytest_command,
    run_once,
    scratch_dir,
    write,
)

DEFAULT_ROUNDS = 0
"""0: each measure's own number of rounds (:data:`ROUNDS`); ``--rounds N`` sets them all."""
ROUNDS = {"one": 11, "fully_shard": 5, "crash": 7, "per_test": 7}
PYTEST = ("-q", "-p", "no:cacheprovider")
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # as bench_distributed.py: the fully_shard bodies

ONE_WORLD_TEST = """
    import pytest
    import torch
    import torch.distributed as dist


    @pytest.mark.composable(devices=["cpu"], world_size=2)
    def test_all_reduce(composable_world):
        t = torch.ones(1)
        dist.all_reduce(t)
        assert t.item() == 2
"""

ONE_PLAIN_TEST = """
    import torch


    def test_plain():
        assert torch.ones(1).item() == 1
"""

CRASH = """
    import os

    import pytest
    import torch
    import torch.distributed as dist

    pytestmark = pytest.mark.composable(devices=["cpu"], world_size=2)


    def test_first(composable_world):
        if composable_world.rank == 1 and os.environ["CRASH"] == "1":
            os._exit(7)
        dist.barrier()


    @pytest.mark.parametrize("i", range(10))
    def test_after(composable_world, i):
        t = torch.ones(1)
        dist.all_reduce(t)
        assert t.item() == 2
"""

# Records, in the main process, when each test finished (the ranks load it too).
STAMPS = """
    import time

    STAMPS = []


    def pytest_runtest_logfinish(nodeid, location):
        STAMPS.append(time.perf_counter())


    def pytest_sessionfinish(session):
        if STAMPS:
            with open("stamps.txt", "w") as f:
                f.write(" ".join(map(str, STAMPS)))
"""

TRIVIAL_WORLD = """
    import pytest
    import torch
    import torch.distributed as dist

    pytestmark = pytest.mark.composable(devices=["cpu"], world_size=2)


    @pytest.mark.parametrize("i", range(101))
    def test_all_reduce(composable_world, i):
        dist.all_reduce(torch.ones(1))
"""

TRIVIAL_PLAIN = """
    import pytest
    import torch


    @pytest.mark.parametrize("i", range(101))
    def test_plain(i):
        torch.ones(1)
"""

PSS_TEST = """
    import json
    import os
    from pathlib import Path

    import pytest
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from pytest_composable.models import CompositeModel


    def pss_kib(pid):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
        return 0


    def parent(pid):
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


    @pytest.mark.composable(devices=["cpu"], world_size=4)
    def test_pss(composable_world):
        torch.manual_seed(0)
        model = CompositeModel("cpu")
        fully_shard(model, mesh=init_device_mesh("cpu", (4,)))
        model(torch.randn(4, 100)).sum().backward()
        # Each rank with its supervisor (its parent), whose child the rank is.
        pids = [None] * 4
        dist.all_gather_object(pids, (os.getpid(), os.getppid()))
        if composable_world.rank == 0:
            supervisor = os.getppid()
            template = parent(supervisor) if os.environ["MODE"] == "warm" else None
            main = parent(template) if template else parent(supervisor)
            Path(os.environ["PSS_OUT"]).write_text(json.dumps({
                "ranks": sum(pss_kib(rank) + pss_kib(sup) for rank, sup in pids),
                "template": pss_kib(template) if template else 0,
                "main": pss_kib(main),
            }))
        dist.barrier()
"""


def _session(
    root: Path, name: str, files: dict[str, str], *args: str
) -> tuple[str, list[str], Path]:
    directory = root / name
    for file, text in files.items():
        write(directory / file, text)
    return name, pytest_command(*PYTEST, *args), directory


def one_world_test(root: Path, rounds: int) -> Result:
    return compare(
        "one trivial world test vs one plain torch test (session)",
        1.25,
        _session(root, "world", {"test_one.py": ONE_WORLD_TEST}),
        _session(root, "plain", {"test_plain.py": ONE_PLAIN_TEST}, "-p", "no:composable"),
        rounds,
        "1 passed",
    )


def fully_shard(root: Path, rounds: int) -> Result:
    import textwrap

    from bench_distributed import BODY, CONTINUOUS, PLUGIN, _tests

    n = 20
    plugin = PLUGIN.format(n=n, body=textwrap.indent(BODY.strip(), " " * 4))
    continuous = CONTINUOUS.format(body=textwrap.indent(BODY.strip(), " " * 8), tests=_tests(n))
    return compare(
        "20 fully_shard tests vs MultiProcContinuousTest",
        0.6,
        _session(root, "fsdp_plugin", {"test_plugin.py": plugin}),
        _session(
            root, "fsdp_continuous", {"test_continuous.py": continuous}, "-p", "no:composable"
        ),
        rounds,
        f"{n} passed",
        # The PyTorch harness sometimes fails at process exit after its tests passed.
        codes=(0, None),
        env=ONE_THREAD,
    )


def crash_restart(root: Path, rounds: int) -> Result:
    files = {"test_crash.py": CRASH}
    crash = _session(root, "crash", files)
    clean = _session(root, "no_crash", files)
    return compare_env(
        "a rank crash and its pool's restart, added to an 11-test session",
        0.5,
        (crash, {"CRASH": "1"}, 1, "1 failed, 10 passed"),
        (clean, {"CRASH": "0"}, 0, "11 passed"),
        rounds,
    )


def compare_env(
    name: str,
    target: float,
    a: tuple[tuple[str, list[str], Path], dict[str, str], int, str],
    b: tuple[tuple[str, list[str], Path], dict[str, str], int, str],
    rounds: int,
) -> Result:
    """As :func:`_harness.compare` with kind ``difference``, each side with its own
    environment, exit code and expected output."""

    sides = (a, b)

    def once(side: int) -> tuple[float, float]:
        (_, command, cwd), env, code, output = sides[side]
        return run_once(command, cwd, output, code, env)

    samples = interleave(once, rounds)

    def timings(side: int) -> Timings:
        walls, cpus = zip(*samples[side], strict=True)
        return Timings(sides[side][0][0], walls, cpus)

    return Result(name, target, timings(0), timings(1), "difference")


def per_test(root: Path, rounds: int) -> Result:
    sides = (
        _session(root, "trivial_world", {"conftest.py": STAMPS, "test_many.py": TRIVIAL_WORLD}),
        _session(
            root,
            "trivial_plain",
            {"conftest.py": STAMPS, "test_many.py": TRIVIAL_PLAIN},
            "-p",
            "no:composable",
        ),
    )

    def once(side: int) -> float:
        _, command, cwd = sides[side]
        done = subprocess.run(command, cwd=cwd, env=_environment(), capture_output=True, text=True)
        if done.returncode != 0 or "101 passed" not in done.stdout:
            raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout[-3000:]}{done.stderr}")
        stamps = [float(x) for x in (cwd / "stamps.txt").read_text().split()]
        return (stamps[-1] - stamps[0]) / (len(stamps) - 1)

    samples = interleave(once, rounds)

    def timings(side: int) -> Timings:
        return Timings(sides[side][0], tuple(samples[side]), tuple(0.0 for _ in samples[side]))

    return Result(
        "time per trivial world test (101 in a session)", 3.0, timings(0), timings(1), "per-test"
    )


def measure_all(rounds: int) -> list[Result]:
    """Every measure, each with ``rounds`` rounds (0: its own default, :data:`ROUNDS`)."""

    def n(name: str) -> int:
        return rounds or ROUNDS[name]

    with scratch_dir() as root:
        return [
            one_world_test(root, n("one")),
            fully_shard(root, n("fully_shard")),
            crash_restart(root, n("crash")),
            per_test(root, n("per_test")),
        ]


def pss(rounds: int) -> str:
    """The processes' PSS (MiB) for a world of 4, warm against cold: medians of ``rounds``."""
    lines = []
    with scratch_dir() as root:
        _, command, cwd = _session(root, "pss", {"test_pss.py": PSS_TEST})
        for mode in ("warm", "cold"):
            out = root / f"pss-{mode}.json"
            values: dict[str, list[float]] = {"ranks": [], "template": [], "main": []}
            for _ in range(rounds):
                env = {**_environment(), "MODE": mode, "PSS_OUT": str(out), **ONE_THREAD}
                done = subprocess.run(
                    [*command, f"--composable-start={mode}"],
                    cwd=cwd,
                    env=env,
                    capture_output=True,
                    text=True,
                )
                if done.returncode != 0:
                    raise SystemExit(f"PSS session failed ({mode}):\n{done.stdout[-3000:]}")
                for key, kib in json.loads(out.read_text()).items():
                    values[key].append(kib / 1024)
            med = {key: statistics.median(v) for key, v in values.items()}
            lines.append(
                f"  {mode}: ranks {med['ranks']:.0f} MiB combined"
                + (f", template {med['template']:.0f} MiB" if mode == "warm" else "")
                + f", main process {med['main']:.0f} MiB"
            )
    return "PSS, world of 4 (fully_shard step done), median of runs:\n" + "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser, DEFAULT_ROUNDS)
    parser.add_argument("--pss", action="store_true", help="also measure PSS, warm vs cold")
    args = parser.parse_args()
    apply_arguments(args)
    start = time.perf_counter()
    results = measure_all(args.rounds)
    for result in results:
        print(result.report(), flush=True)
    if args.pss:
        print(pss(3))
    print(f"({time.perf_counter() - start:.0f} s)")
    sys.exit(0 if all(r.met for r in results) else 1)


if __name__ == "__main__":
    main()
