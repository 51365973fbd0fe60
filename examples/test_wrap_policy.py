"""Which modules ``ModuleWrapPolicy`` selects, and that ``FakeSequential`` hides its layers.

The policy is asked the way FSDP's auto-wrapping asks any ``auto_wrap_policy``
callable: once per registered module (``named_modules()``), with
``recurse=False``. Layers that a ``FakeSequential`` runs without registering
them are never offered to it. These checks are structural, so they run on
every device, ``meta`` included.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.fsdp.wrap import ModuleWrapPolicy

from pytest_composable.models import FakeSequential, UnitModule


def _selected(policy: ModuleWrapPolicy, root: nn.Module) -> list[str]:
    """FQNs of the modules ``policy`` would wrap, in ``named_modules()`` order."""
    return [
        name
        for name, module in root.named_modules()
        if policy(
            module=module,
            recurse=False,
            nonwrapped_numel=sum(p.numel() for p in module.parameters()),
        )
    ]


def _run_linears(root: nn.Module) -> list[nn.Linear]:
    """Every ``nn.Linear`` the forward pass runs, the unregistered ones included."""
    found: list[nn.Linear] = []
    for module in root.modules():
        if isinstance(module, nn.Linear):
            found.append(module)
        elif isinstance(module, FakeSequential):
            for layer in module.hidden_modules():
                found.extend(_run_linears(layer))
    return found


def test_sequential_policy_picks_top_level_sequentials(
    nested_sequential_model: nn.Module,
) -> None:
    policy = ModuleWrapPolicy({nn.Sequential})

    assert _selected(policy, nested_sequential_model) == ["seq1", "seq2"]


def test_fake_sequential_policy_sees_only_registered_ones(
    nested_sequential_model: nn.Module,
) -> None:
    policy = ModuleWrapPolicy({FakeSequential})

    # The FakeSequential nested inside seq1.1 is held, not registered.
    assert _selected(policy, nested_sequential_model) == ["seq1.1", "seq2.2"]


def test_linear_policy_does_not_see_fake_sequential_layers(
    nested_sequential_model: nn.Module,
) -> None:
    policy = ModuleWrapPolicy({nn.Linear})
    selected = _selected(policy, nested_sequential_model)

    assert selected == ["seq1.0", "seq1.2", "lin", "seq2.1"]
    assert len(_run_linears(nested_sequential_model)) == 8  # four of them invisible to the policy


def test_nested_model_runs_after_move(
    nested_sequential_model: nn.Module, composable_device: torch.device
) -> None:
    out = nested_sequential_model(torch.randn(4, 1, device=composable_device))

    assert (out.shape, out.device) == (torch.Size([4, 4]), composable_device)
    assert {layer.weight.device for layer in _run_linears(nested_sequential_model)} == {
        composable_device
    }


def test_unit_module_policy_picks_units_of_composite_model(composite_model: nn.Module) -> None:
    policy = ModuleWrapPolicy({UnitModule})

    assert _selected(policy, composite_model) == ["u1", "u2"]
    assert _selected(ModuleWrapPolicy({nn.Linear}), composite_model) == [
        "l1",
        "u1.l1",
        "u1.seq.1",
        "u1.l2",
        "u2.l1",
        "u2.seq.1",
        "u2.l2",
        "l2",
    ]
