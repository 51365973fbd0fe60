"""``@pytest.mark.composable(devices=[...], models=[...])``: narrowing, skips and errors.

The runs are in-process: nothing here depends on the command line or the environment.
"""

from __future__ import annotations

import pytest

from tests.helpers import assert_clear_error, assert_no_plugin_frames, verbose_outcomes


def test_marker_narrows_tests_classes_and_modules(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_module="""
import pytest

pytestmark = pytest.mark.composable(devices=["meta"])

def test_module_wide(composable_device):
    assert composable_device.type == "meta"

@pytest.mark.composable(devices=["cpu"])
def test_closest_wins(composable_device):
    assert composable_device.type == "cpu"

@pytest.mark.composable(models=["unit_module", "composite_model"])
def test_models_keep_module_devices(composable_model):
    pass
""",
        test_class="""
import pytest

@pytest.mark.composable(devices=["cpu"], models=["nested_sequential_model"])
class TestNarrowed:
    def test_class_wide(self, composable_model, composable_device):
        assert composable_device.type == "cpu"

    @pytest.mark.composable(devices=["all"])
    def test_method_widens_devices(self, composable_model):
        pass

    @pytest.mark.composable(devices=["cuda"])
    def test_unavailable(self, composable_device):
        raise AssertionError("must be skipped")

@pytest.mark.composable(devices=["cuda:1", "meta"])
def test_partly_unavailable(composable_device):
    assert composable_device.type == "meta"

@pytest.mark.composable(devices=["meta", "META", "meta"], models=["unit_module", "unit_module"])
def test_duplicates(composable_model):
    pass

@pytest.mark.composable(devices=["meta"])
def test_marker_without_fixture():
    pass
""",
    )
    result = pytester.runpytest("-v", "-rs", "--strict-markers")
    assert verbose_outcomes(result) == {
        "test_class.py::TestNarrowed::test_class_wide[nested_sequential_model-cpu]": "PASSED",
        "test_class.py::TestNarrowed::test_method_widens_devices[nested_sequential_model-cpu]": (
            "PASSED"
        ),
        "test_class.py::TestNarrowed::test_method_widens_devices[nested_sequential_model-meta]": (
            "PASSED"
        ),
        "test_class.py::TestNarrowed::test_unavailable[cuda]": "SKIPPED",
        "test_class.py::test_partly_unavailable[meta]": "PASSED",
        "test_class.py::test_partly_unavailable[cuda:1]": "SKIPPED",
        "test_class.py::test_duplicates[unit_module-meta]": "PASSED",
        "test_class.py::test_marker_without_fixture": "PASSED",
        "test_module.py::test_module_wide[meta]": "PASSED",
        "test_module.py::test_closest_wins[cpu]": "PASSED",
        "test_module.py::test_models_keep_module_devices[unit_module-meta]": "PASSED",
        "test_module.py::test_models_keep_module_devices[composite_model-meta]": "PASSED",
    }
    result.stdout.fnmatch_lines_random(
        [
            "SKIPPED * composable: cuda is not available on this machine; "
            "this machine has: cpu, meta",
            "SKIPPED * composable: cuda:1 is not available on this machine; "
            "this machine has: cpu, meta",
        ]
    )
    assert result.ret == pytest.ExitCode.OK


def test_empty_intersection_skips_with_a_reason(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_x="""
import pytest

@pytest.mark.composable(devices=["meta"])
def test_meta_only(unit_module):
    raise AssertionError("must be skipped")

def test_cpu(composable_device):
    assert composable_device.type == "cpu"
"""
    )
    result = pytester.runpytest("-v", "-rs", "--composable-device=cpu")
    assert verbose_outcomes(result) == {
        "test_x.py::test_meta_only[meta]": "SKIPPED",
        "test_x.py::test_cpu[cpu]": "PASSED",
    }
    result.stdout.fnmatch_lines(
        ["SKIPPED * composable: none of the marker's devices (meta) is selected; selected: cpu"]
    )


def test_bad_markers_are_collection_errors(pytester: pytest.Pytester) -> None:
    """Unknown model, unknown keyword, positional args, bad values: named, without plugin frames."""
    cases = {
        "unknown_model": (
            'composable(models=["unit_module", "no_such_model"])',
            "composable_model",
            "*composable(models=...) names unknown model(s) no_such_model; known models: "
            "unit_module, composite_model, unit_param_module, composite_param_model, "
            "nested_sequential_model*",
        ),
        "unknown_keyword": (
            'composable(device=["cpu"])',
            "composable_device",
            "*composable marker got unknown keyword(s) device; known: devices, models*",
        ),
        "positional": (
            'composable("cpu")',
            "composable_device",
            "*composable marker takes keywords only*got positional ('cpu',)*",
        ),
        "not_a_device": (
            'composable(devices=["cdua"])',
            "composable_device",
            "*composable(devices=...): 'cdua' is not a device type torch knows*",
        ),
        "cpu_index": (
            'composable(devices=["cpu:1"])',
            "composable_device",
            "*composable(devices=...): 'cpu:1': cpu takes no device index*",
        ),
        "not_strings": (
            "composable(devices=[0])",
            "composable_device",
            "*composable(devices=...) takes a list of strings, got [[]0[]]*",
        ),
        "empty": (
            "composable(models=[])",
            "composable_model",
            "*composable(models=...) is empty*",
        ),
        "unknown_keyword_plain": ("composable(colour=1)", "", "*unknown keyword(s) colour*"),
    }
    for name, (marker, fixture, _) in cases.items():
        pytester.makepyfile(
            **{
                f"test_{name}": f"import pytest\n\n@pytest.mark.{marker}\n"
                f"def test_it({fixture}):\n    pass\n"
            }
        )
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.assert_outcomes(errors=len(cases))
    for name, (_, _, message) in cases.items():
        result.stdout.fnmatch_lines([f"*ERROR collecting test_{name}.py*", message])
    assert_no_plugin_frames(result)


def test_unknown_model_is_an_error_without_composable_model(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_x="""
import pytest

@pytest.mark.composable(models=["no_such_model"])
def test_device_only(composable_device):
    pass

@pytest.mark.composable(models=["no_such_model"])
def test_model_fixture(unit_module):
    pass
"""
    )
    result = pytester.runpytest()
    assert_clear_error(result, "*no_such_model*")


def test_long_marker_values_are_cut_in_the_message(pytester: pytest.Pytester) -> None:
    """A marker's message cuts a value as the options' messages do (about 200 characters),
    also a number too long for ``repr()`` (more than 4,300 digits). Before, the message ran
    to thousands of characters, or was a ``ValueError`` traceback from the plugin."""
    cases = {
        "devices": ("composable(devices=[10**4000])", "composable_device", "*got [[]1000*"),
        "huge_devices": (
            "composable(devices=[10**5000])",
            "composable_device",
            "*composable(devices=...) takes a list of strings, got <list that repr() cannot*",
        ),
        "positional": ("composable(10**4000)", "composable_device", "*got positional (1000*"),
        "models": (
            f'composable(models=["{"m" * 3000}"])',
            "composable_model",
            "*names unknown model(s) mmm*... (3000 characters); known models: unit_module*",
        ),
        "rank": (
            "composable(rank=10**5000)",
            "",
            "*composable(rank=<int that repr() cannot show>) is not below world size 2*",
        ),
        "timeout": (
            "composable(timeout=10**5000)",
            "",
            "*composable(timeout=...) takes a number of seconds above 0 and at most 604800 "
            "(one week), got <int that repr() cannot show>*",
        ),
    }
    for name, (marker, fixture, _) in cases.items():
        pytester.makepyfile(
            **{
                f"test_{name}": f"import pytest\n\n@pytest.mark.{marker}\n"
                f"def test_it({fixture}):\n    pass\n"
            }
        )
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.assert_outcomes(errors=len(cases))
    for name, (_, _, message) in cases.items():
        result.stdout.fnmatch_lines([f"*ERROR collecting test_{name}.py*", message])
    assert_no_plugin_frames(result)
    assert max(len(line) for line in result.outlines) < 600
