"""Ways to misuse a world that fail with the cause, not with the plugin's internals."""

from __future__ import annotations

import pytest

from tests.helpers import assert_no_plugin_frames

GETFIXTUREVALUE = """
import pytest


@pytest.fixture
def world(request):
    return request.getfixturevalue("composable_world")


def test_through_a_fixture(world):
    pass


def test_in_the_body(request):
    request.getfixturevalue("composable_world")
"""


def test_getfixturevalue_says_to_name_the_world(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_gfv=GETFIXTUREVALUE)
    result = pytester.runpytest("-p", "no:cacheprovider", "--composable-device=cpu")
    result.assert_outcomes(errors=1, failed=1)
    for test in ("test_through_a_fixture", "test_in_the_body"):
        result.stdout.fnmatch_lines(
            [
                f"*composable: test_gfv.py::{test}* must name composable_world as an argument "
                "(of the test or of a fixture it uses) to run on the ranks; "
                'request.getfixturevalue("composable_world") cannot move a running test there'
            ]
        )
    assert "is the plugin's runtest protocol disabled" not in result.stdout.str()
    assert_no_plugin_frames(result)
