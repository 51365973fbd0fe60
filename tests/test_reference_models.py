"""The FSDP2/TP model fixtures (``mlp``, ``mlp_stack``, ``transformer``) and
``composable_reference_model``."""

from __future__ import annotations

import pytest

from tests.helpers import BUILTIN_NAMES, assert_no_plugin_frames, collected_ids, output_of

FIXTURES = """
import pytest
import torch

from pytest_composable.models import MLP, MLPStack, ModelArgs, Transformer


def _equal(model, expected):
    pairs = list(zip(model.state_dict().values(), expected.state_dict().values()))
    assert len(pairs) == len(expected.state_dict())
    if next(model.parameters()).is_meta:
        return all(a.shape == b.shape for a, b in pairs)
    return all(torch.equal(a, b.to(a.device)) for a, b in pairs)


def test_mlp(mlp, composable_input, composable_device):
    torch.manual_seed(0)
    assert _equal(mlp, MLP(16))
    assert mlp.in_proj.weight.device.type == composable_device.type
    assert composable_input.shape == (4, 16)
    assert composable_input.dtype == torch.float32


def test_mlp_stack(mlp_stack, composable_input):
    torch.manual_seed(0)
    assert _equal(mlp_stack, MLPStack(16))
    assert composable_input.shape == (4, 16)


def test_transformer(transformer, composable_input):
    torch.manual_seed(0)
    assert _equal(transformer, Transformer(ModelArgs(dropout_p=0.0)))
    assert transformer.layers[0].attention.dropout_p == 0.0
    assert composable_input.shape == (4, 8)
    assert composable_input.dtype == torch.int64
    if not composable_input.is_meta:
        assert int(composable_input.max()) < 8


@pytest.mark.composable(dtypes=["bfloat16"])
def test_transformer_in_a_dtype(transformer, composable_input, composable_dtype):
    assert transformer.output.weight.dtype == torch.bfloat16
    assert composable_input.dtype == torch.int64  # token ids stay integers
"""


def test_model_fixtures_per_device(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_fixtures=FIXTURES)
    result = pytester.runpytest("-v", "-p", "no:cacheprovider")
    assert result.ret == 0, output_of(result)
    result.stdout.fnmatch_lines(
        ["*test_mlp[[]cpu[]] PASSED*", "*test_mlp[[]meta[]] PASSED*", "*test_transformer[[]cpu[]]*"]
    )
    assert result.parseoutcomes()["passed"] == 8


def test_composable_model_keeps_its_default_models(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_ids="""
        import pytest

        @pytest.mark.composable(devices=["cpu"])
        def test_default(composable_model):
            pass

        @pytest.mark.composable(devices=["cpu"], models=["mlp", "transformer", "unit_module"])
        def test_chosen(composable_model, composable_input):
            pass
        """
    )
    result = pytester.runpytest("--collect-only", "-q", "-p", "no:cacheprovider")
    assert collected_ids(result) == [
        *(f"test_ids.py::test_default[{name}-cpu]" for name in BUILTIN_NAMES),
        "test_ids.py::test_chosen[mlp-cpu]",
        "test_ids.py::test_chosen[transformer-cpu]",
        "test_ids.py::test_chosen[unit_module-cpu]",
    ]
    assert pytester.runpytest("-p", "no:cacheprovider").ret == 0


REFERENCE = """
import pytest
import torch


def _same_values(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.composable(devices=["cpu"])
def test_follows_the_named_model(mlp, composable_reference_model):
    assert composable_reference_model is not mlp
    assert type(composable_reference_model) is type(mlp)
    assert _same_values(mlp, composable_reference_model)
    with torch.no_grad():
        mlp.in_proj.weight.add_(1)
    assert not _same_values(mlp, composable_reference_model)


@pytest.mark.composable(devices=["cpu"])
def test_follows_composable_model(composable_model, composable_reference_model):
    assert composable_reference_model is not composable_model
    assert type(composable_reference_model) is type(composable_model)
    assert _same_values(composable_model, composable_reference_model)


@pytest.mark.composable(devices=["cpu"], dtypes=["float64"])
def test_follows_the_dtype(composite_model, composable_reference_model, composable_dtype):
    assert composable_reference_model.l1.weight.dtype == torch.float64
    assert _same_values(composite_model, composable_reference_model)


@pytest.mark.composable(devices=["cpu"], world_size=2)
def test_on_every_rank(composable_world, transformer, composable_reference_model):
    assert _same_values(transformer, composable_reference_model)
"""


def test_reference_model(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_reference=REFERENCE)
    result = pytester.runpytest_subprocess("-v", "-p", "no:cacheprovider")
    assert result.ret == 0, output_of(result)
    result.stdout.fnmatch_lines(
        [
            "*test_follows_the_named_model[[]cpu[]] PASSED*",
            "*test_follows_composable_model[[]unit_module-cpu[]] PASSED*",
            "*test_follows_the_dtype[[]cpu-float64[]] PASSED*",
            "*test_on_every_rank[[]cpu[]] PASSED*",
        ]
    )
    assert result.parseoutcomes()["passed"] == 8


def test_reference_with_two_model_fixtures_is_a_collection_error(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        test_two="""
        def test_x(mlp, transformer, composable_reference_model):
            pass
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.INTERRUPTED, output_of(result)
    result.stdout.fnmatch_lines(
        [
            "*test_two.py::test_x: composable_reference_model is a second instance of one "
            "model, and this test uses mlp, transformer; use composable_model*"
        ]
    )
    assert_no_plugin_frames(result)


def test_a_hook_model_named_mlp_wins(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        import torch
        from pytest_composable import ModelSpec

        def pytest_composable_models(config):
            build, make_input = lambda d: torch.nn.Linear(3, 3), lambda d, b: torch.ones(b, 3)
            return [ModelSpec("mlp", build, make_input)]
        """
    )
    pytester.makepyfile(
        test_hook="""
        import torch

        def test_x(mlp, composable_input):
            assert isinstance(mlp, torch.nn.Linear)
            assert composable_input.shape == (4, 3)
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "--composable-device=cpu")
    assert result.ret == 0, output_of(result)
