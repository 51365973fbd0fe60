"""Collecting 1,000 ``composable_model`` items versus the same parametrization by hand.

Both generated suites hold the same test file: ``@pytest.mark.parametrize("i",
range(100))`` on a test that takes ``composable_model``. A gets
``composable_model`` from pytest-composable (5 models x devices cpu and meta,
set with the ``composable_device`` ini setting); B runs with
``-p no:composable`` and a ``conftest.py`` whose hand-written, parametrized
``composable_model`` fixture builds the same models on the same devices (it
imports torch and the model classes, as the plugin does). Both sides collect
1,000 items; the ratio of the median ``python -m pytest --collect-only -q``
wall times is printed (target: <= 1.2).

    python benchmarks/bench_collect.py [--rounds N]
"""

from __future__ import annotations

from _harness import Result, compare, main, model_suite_sides, scratch_dir

TARGET = 1.2
DEFAULT_ROUNDS = 7


def measure(rounds: int) -> Result:
    with scratch_dir() as root:
        a, b = model_suite_sides(root, "--collect-only")
        return compare(
            "collect 1,000 composable_model items",
            TARGET,
            a,
            b,
            rounds,
            "1000 tests collected",
        )


if __name__ == "__main__":
    main(measure, DEFAULT_ROUNDS)
