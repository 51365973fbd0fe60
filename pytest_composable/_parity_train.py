"""Training helpers of :func:`pytest_composable.parity.assert_training_parity`:
the defaults, the input of each step and the random state both models start from."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeAlias

import torch
from torch import nn

from ._parity_compare import dtensor_of
from ._parity_params import local

__all__ = [
    "Inputs",
    "RngState",
    "default_forward",
    "default_loss",
    "default_optimizer",
    "floating_dtypes",
    "items",
    "loss_value",
    "rng_devices",
    "rng_state",
    "set_rng_state",
]

Inputs: TypeAlias = torch.Tensor | tuple[Any, ...] | Sequence[Any] | Callable[[int], Any]


def default_optimizer(parameters: Iterator[nn.Parameter]) -> torch.optim.Optimizer:
    """SGD, lr 1e-2, momentum 0.9: sensitive to a gradient's scale, unlike Adam."""
    return torch.optim.SGD(parameters, lr=1e-2, momentum=0.9)


def default_loss(output: Any) -> torch.Tensor:
    """``output.sum()``, for an output that is a tensor."""
    if not isinstance(output, torch.Tensor):
        raise TypeError(
            f"the model returned a {type(output).__name__}; the default loss is "
            "output.sum(): pass loss= to map this output to a scalar"
        )
    return output.sum()


def default_forward(model: nn.Module, item: Any) -> Any:
    """``model(item)`` for a tensor, ``model(*item)`` for a tuple."""
    if isinstance(item, torch.Tensor):
        return model(item)
    if isinstance(item, tuple):
        return model(*item)
    raise TypeError(
        f"an input item is a tensor or a tuple of positional arguments, not a "
        f"{type(item).__name__}: pass forward=lambda model, item: ... for anything else"
    )


def items(inputs: Inputs, steps: int) -> Callable[[int], Any]:
    """The input item of each step."""
    if isinstance(inputs, torch.Tensor | tuple):
        return lambda step: inputs
    if isinstance(inputs, Sequence) and not isinstance(inputs, str | bytes):
        if len(inputs) < steps:
            raise ValueError(
                f"inputs has {len(inputs)} item(s) for steps={steps}: give one item per step "
                "(or one tensor or tuple for every step, or a callable from the step to its "
                "item)"
            )
        return lambda step: inputs[step]
    if callable(inputs):
        return inputs
    raise TypeError(
        f"inputs is a {type(inputs).__name__}: give a tensor or tuple (every step), a list "
        "(one item per step) or a callable from the step to its item"
    )


def rng_devices(*models: nn.Module) -> list[torch.device]:
    """The accelerator devices the models' parameters live on."""
    devices: list[torch.device] = []
    for model in models:
        for param in model.parameters():
            device = local(param).device
            if device.type not in ("cpu", "meta") and device not in devices:
                devices.append(device)
    return devices


RngState: TypeAlias = tuple[torch.Tensor, list[tuple[torch.device, torch.Tensor]]]


def rng_state(devices: Iterable[torch.device]) -> RngState:
    """The CPU generator's state and each device's."""
    states = []
    for device in devices:
        module = getattr(torch, device.type)
        try:
            states.append((device, module.get_rng_state(device)))
        except TypeError:  # a one-device backend (mps): no device argument
            states.append((device, module.get_rng_state()))
    return torch.get_rng_state(), states


def set_rng_state(state: RngState) -> None:
    """Restore what :func:`rng_state` saved."""
    cpu, devices = state
    torch.set_rng_state(cpu)
    for device, device_state in devices:
        module = getattr(torch, device.type)
        try:
            module.set_rng_state(device_state, device)
        except TypeError:
            module.set_rng_state(device_state)


def loss_value(loss: torch.Tensor) -> float:
    """The loss as a float (a DTensor loss gathered whole first)."""
    dtensor = dtensor_of(loss)
    if dtensor is not None:
        loss = dtensor.full_tensor()
    return float(loss.detach().item())


def floating_dtypes(*models: nn.Module) -> list[torch.dtype]:
    """The floating dtypes of the models' parameters, for the loss's tolerances."""
    return [p.dtype for m in models for p in m.parameters() if p.dtype.is_floating_point]
