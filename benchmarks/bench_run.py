"""Running 1,000 ``composable_model`` items versus the same parametrization by hand.

The suites of ``bench_collect.py`` (the plugin's ``composable_model`` against
a hand-written parametrized fixture that builds the same models on the same
devices), run in full: every item builds its model. The test body only
checks ``model.training``, so fixture and model-building costs dominate. The
ratio of the median ``python -m pytest -q`` wall times is printed
(target: <= 1.05).

    python benchmarks/bench_run.py [--rounds N]
"""

from __future__ import annotations

from _harness import Result, compare, main, model_suite_sides, scratch_dir

TARGET = 1.05
DEFAULT_ROUNDS = 11


def measure(rounds: int) -> Result:
    with scratch_dir() as root:
        a, b = model_suite_sides(root)
        return compare("run 1,000 composable_model items", TARGET, a, b, rounds, "1000 passed")


if __name__ == "__main__":
    main(measure, DEFAULT_ROUNDS)
