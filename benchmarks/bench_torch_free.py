"""Overhead of having pytest-composable installed on a suite that never uses it.

Runs a generated torch-free suite of 200 trivial tests (20 files of 10) as a
whole ``python -m pytest -q`` subprocess, with the plugin (A) and with
``-p no:composable`` (B), interleaved, and prints the ratio of the median wall
times (target: <= 1.05). One of the 200 tests asserts that torch was never
imported, so A really stays torch-free.

    python benchmarks/bench_torch_free.py [--rounds N]
"""

from __future__ import annotations

from pathlib import Path

from _harness import INI, Result, compare, main, pytest_command, scratch_dir, write

FILES = 20
TESTS_PER_FILE = 10
TARGET = 1.05
DEFAULT_ROUNDS = 41

TORCH_FREE_TEST = """
def test_torch_is_not_imported():
    import sys

    assert "torch" not in sys.modules
"""


def _trivial(f: int, t: int) -> str:
    return f"\n\ndef test_{f}_{t}():\n    assert {t} + 1 == {t + 1}\n"


def write_suite(root: Path) -> None:
    write(root / "pytest.ini", INI)
    for f in range(FILES):
        first = TORCH_FREE_TEST if f == 0 else _trivial(f, 0)
        rest = "".join(_trivial(f, t) for t in range(1, TESTS_PER_FILE))
        write(root / f"test_trivial_{f:02d}.py", first + rest)


def measure(rounds: int) -> Result:
    with scratch_dir() as root:
        write_suite(root)
        expected = f"{FILES * TESTS_PER_FILE} passed"
        return compare(
            "torch-free suite, 200 tests (whole run)",
            TARGET,
            ("plugin installed", pytest_command("-q"), root),
            ("-p no:composable", pytest_command("-q", "-p", "no:composable"), root),
            rounds,
            expected,
        )


if __name__ == "__main__":
    main(measure, DEFAULT_ROUNDS)
