"""The models against upstream's ``torch.testing._internal.common_dist_composable``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.testing._internal.common_dist_composable as upstream
from torch import nn

from pytest_composable import models
from tests.helpers import BUILTIN_MODELS

MODEL_NAMES = tuple(cls for _, cls, _ in BUILTIN_MODELS)


def build(module: object, name: str, seed: int, device: str = "cpu") -> nn.Module:
    """``module.<name>(device)`` built after ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    model: nn.Module = getattr(module, name)(device)
    return model


def hidden_layers(model: nn.Module) -> list[nn.Module]:
    """The layers every ``FakeSequential`` in ``model`` holds unregistered, nested ones included.

    Works for ours and upstream's (both keep them in ``_module_sequence``).
    """
    found: list[nn.Module] = []

    def visit(module: nn.Module) -> None:
        held: list[nn.Module] = getattr(module, "_module_sequence", [])
        for layer in held:
            found.append(layer)
            visit(layer)
        for child in module.children():
            visit(child)

    visit(model)
    return found


def hidden_tensors(model: nn.Module) -> Iterator[torch.Tensor]:
    for layer in hidden_layers(model):
        yield from layer.parameters(recurse=False)
        yield from layer.buffers(recurse=False)


def assert_same_tensors(ours: nn.Module, theirs: nn.Module) -> None:
    """Same state_dict keys and values, and the same hidden layers' values."""
    ours_state, theirs_state = ours.state_dict(), theirs.state_dict()
    assert list(ours_state) == list(theirs_state)
    for key, value in ours_state.items():
        assert torch.equal(value, theirs_state[key]), key
    ours_hidden, theirs_hidden = list(hidden_tensors(ours)), list(hidden_tensors(theirs))
    assert len(ours_hidden) == len(theirs_hidden)
    for mine, other in zip(ours_hidden, theirs_hidden, strict=True):
        assert torch.equal(mine, other)


@pytest.mark.parametrize("seed", [0, 7])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_matches_upstream(name: str, seed: int) -> None:
    ours, theirs = build(models, name, seed), build(upstream, name, seed)
    assert_same_tensors(ours, theirs)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    assert [n for n, _ in ours.named_buffers()] == [n for n, _ in theirs.named_buffers()]
    assert [n for n, _ in ours.named_modules()] == [n for n, _ in theirs.named_modules()]
    ours_types = [type(m).__name__ for m in ours.modules()]
    assert ours_types == [type(m).__name__ for m in theirs.modules()]


def test_a_different_seed_gives_different_values() -> None:
    first, second = build(models, "CompositeParamModel", 0), build(models, "CompositeParamModel", 1)
    assert not torch.equal(first.state_dict()["p"], second.state_dict()["p"])


@pytest.mark.parametrize(
    ("name", "parameters", "buffers", "hidden"),
    [
        ("UnitModule", 30_300, 0, 0),
        ("CompositeModel", 80_800, 0, 0),
        ("UnitParamModule", 30_200, 0, 0),
        ("CompositeParamModel", 80_700, 10_000, 0),
        ("NestedSequentialModel", 21, 0, 18),
    ],
)
def test_sizes(name: str, parameters: int, buffers: int, hidden: int) -> None:
    for module in (models, upstream):
        model = build(module, name, 0)
        assert sum(p.numel() for p in model.parameters()) == parameters
        assert sum(b.numel() for b in model.buffers()) == buffers
        assert sum(t.numel() for t in hidden_tensors(model)) == hidden


def test_fake_sequential_keeps_its_layers_unregistered() -> None:
    model = models.NestedSequentialModel("cpu")
    layers = hidden_layers(model)
    assert len(layers) == 7  # six held by the two registered fakes, one by the nested fake
    hidden_ids = {id(layer) for layer in layers}
    hidden_params = {id(t) for t in hidden_tensors(model)}
    assert hidden_ids.isdisjoint(id(m) for m in model.modules())
    assert hidden_params.isdisjoint(id(p) for p in model.parameters())
    state = model.state_dict().values()
    assert all(all(s.data_ptr() != t.data_ptr() for s in state) for t in hidden_tensors(model))
    fakes = [m for m in model.modules() if isinstance(m, models.FakeSequential)]
    assert len(fakes) == 2
    assert all(list(fake.children()) == [] for fake in fakes)
    held = [m for fake in fakes for m in fake.hidden_modules()]
    assert [type(m).__name__ for m in held] == [
        "Linear",
        "ReLU",
        "FakeSequential",
        "ReLU",
        "Linear",
        "Linear",
    ]
    assert all(m in layers for m in held)


def test_to_reaches_hidden_layers() -> None:
    model = models.NestedSequentialModel("cpu").to(torch.float64)
    assert {t.dtype for t in hidden_tensors(model)} == {torch.float64}
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    out = model(torch.ones(3, 1, dtype=torch.float64))
    assert out.dtype == torch.float64


def test_to_empty_from_meta_reaches_hidden_layers_and_forward_runs() -> None:
    model = models.NestedSequentialModel("meta")
    assert all(t.is_meta for t in hidden_tensors(model))
    model.to_empty(device="cpu")
    assert {t.device for t in hidden_tensors(model)} == {torch.device("cpu")}
    assert {p.device for p in model.parameters()} == {torch.device("cpu")}
    assert model(torch.ones(5, 1)).shape == (5, 4)


def test_upstream_to_empty_leaves_hidden_layers_on_meta() -> None:
    """The difference the ``FakeSequential._apply`` override exists for."""
    model = upstream.NestedSequentialModel(torch.device("meta"))
    model.to_empty(device="cpu")
    assert all(t.is_meta for t in hidden_tensors(model))


def test_nested_sequential_forward_shapes() -> None:
    model = models.NestedSequentialModel("cpu")
    out = model(torch.randn(6, 1))
    assert out.shape == (6, 4)
    assert torch.isfinite(out).all()


def test_upstream_nested_sequential_has_no_forward() -> None:
    """Upstream's ``forward`` is a local function in ``__init__``: calling the model raises."""
    model = upstream.NestedSequentialModel(torch.device("cpu"))
    with pytest.raises(NotImplementedError):
        model(torch.randn(6, 1))


@pytest.mark.parametrize("name", MODEL_NAMES[:4])
def test_forward_shapes(name: str) -> None:
    ours, theirs = build(models, name, 0), build(upstream, name, 0)
    batch = torch.randn(4, 100)
    out = ours(batch)
    assert out.shape == (4, 100)
    assert torch.equal(out, theirs(batch))
