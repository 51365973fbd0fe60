"""The model registry: built-in specs, specs added by hooks, and building them.

``FakeSequential`` is a building block (it takes the modules to run), not a
model, so it has no spec; :class:`~pytest_composable.models.NestedSequentialModel`
is the model that exercises it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from . import _mlp, _transformer, models
from .rng import preserved_global_state, seeded_cpu_rng
from .spec import ModelSpec

__all__ = [
    "BUILTIN_MODELS",
    "EXTRA_MODELS",
    "RegistryError",
    "build_input",
    "build_model",
    "collect_models",
    "with_extras",
]


_CPU = torch.device("cpu")


class RegistryError(ValueError):
    """A hook returned something that is not a ``ModelSpec``, or a name is used twice."""


def _randn_input(features: int) -> Callable[[torch.device, int], torch.Tensor]:
    def make_input(device: torch.device, batch: int) -> torch.Tensor:
        return torch.randn(batch, features).to(device)

    return make_input


BUILTIN_MODELS: tuple[ModelSpec, ...] = (
    ModelSpec("unit_module", models.UnitModule, _randn_input(100)),
    ModelSpec("composite_model", models.CompositeModel, _randn_input(100)),
    ModelSpec("unit_param_module", models.UnitParamModule, _randn_input(100)),
    ModelSpec("composite_param_model", models.CompositeParamModel, _randn_input(100)),
    ModelSpec("nested_sequential_model", models.NestedSequentialModel, _randn_input(1)),
)


def _token_input(device: torch.device, batch: int) -> torch.Tensor:
    args = _transformer.small_transformer_args()
    return torch.randint(0, args.vocab_size, (batch, _transformer.SMALL_TRANSFORMER_SEQ_LEN))


EXTRA_MODELS: tuple[ModelSpec, ...] = (
    ModelSpec("mlp", _mlp.small_mlp, _randn_input(_mlp.SMALL_MLP_DIM)),
    ModelSpec("mlp_stack", _mlp.small_mlp_stack, _randn_input(_mlp.SMALL_MLP_DIM)),
    ModelSpec("transformer", _transformer.small_transformer, _token_input),
)
"""The models of PyTorch's FSDP2 and tensor-parallel tests, at small sizes: fixtures of
their own (``mlp``, ``mlp_stack``, ``transformer``) and names ``composable(models=[...])``
may select, but not among the models ``composable_model`` runs over by default."""


def with_extras(registry: dict[str, ModelSpec]) -> dict[str, ModelSpec]:
    """``registry`` and then every :data:`EXTRA_MODELS` spec whose name it does not use
    (a model a hook registers under one of these names wins)."""
    known = dict(registry)
    for spec in EXTRA_MODELS:
        known.setdefault(spec.name, spec)
    return known


def collect_models(hook_results: Iterable[object]) -> dict[str, ModelSpec]:
    """Built-ins first, then each hook's specs in hook-call order, keyed by name."""
    registry = {spec.name: spec for spec in BUILTIN_MODELS}
    for result in hook_results:
        if not isinstance(result, (list, tuple)):
            raise RegistryError(
                f"pytest_composable_models must return a list of ModelSpec, got {result!r}"
            )
        for spec in result:
            if not isinstance(spec, ModelSpec):
                raise RegistryError(
                    f"pytest_composable_models returned {spec!r}, which is not a ModelSpec"
                )
            if spec.name in registry:
                raise RegistryError(
                    f"model name {spec.name!r} is registered twice; model names must be unique"
                )
            registry[spec.name] = spec
    return registry


@contextmanager
def _value_rule(seed: int) -> Iterator[None]:
    """Build under the value rule: the seeded CPU generator, and torch's global
    settings restored afterwards (a ``build()`` may change any)."""
    with preserved_global_state() as default, seeded_cpu_rng(seed):
        # Tensors made without an explicit device must follow the value rule
        # (CPU generator), whatever default device the test has set.
        if default.type != "cpu":
            torch.set_default_device(None)
        yield


def _build_on(device: torch.device) -> torch.device:
    """Where a value for ``device`` is built: meta stays meta, everything else on cpu."""
    return device if device.type == "meta" else _CPU


def build_model(
    spec: ModelSpec, device: torch.device, seed: int, dtype: torch.dtype | None = None
) -> nn.Module:
    """A fresh ``spec`` model on ``device`` whose values come from the CPU generator at ``seed``.

    With ``dtype``, the model as built (float32) is then converted: its floating
    parameters and buffers (``nn.Module.to``), so it equals the float32 model
    ``.to(dtype)`` exactly, on every device. The test's generator state, default
    dtype, default device and grad mode are the same afterwards.
    """
    __tracebackhide__ = True  # a user's build() error should point at the user's code
    device = torch.device(device)
    with _value_rule(seed):
        model = spec.build(_build_on(device))
        if not isinstance(model, nn.Module):
            raise RegistryError(
                f"model {spec.name!r}: build() returned {model!r}, not an nn.Module"
            )
        return model.to(device) if dtype is None else model.to(device=device, dtype=dtype)


def build_input(
    spec: ModelSpec, device: torch.device, seed: int, batch: int, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """An input batch for ``spec`` on ``device``, under the same value rule as the model;
    with ``dtype``, a floating input is converted to it (an integer input, token ids
    say, stays as it is)."""
    __tracebackhide__ = True
    device = torch.device(device)
    with _value_rule(seed):
        batch_input = spec.make_input(_build_on(device), batch)
        if not isinstance(batch_input, torch.Tensor):
            raise RegistryError(
                f"model {spec.name!r}: make_input() returned {batch_input!r}, not a Tensor"
            )
        if dtype is not None and batch_input.is_floating_point():
            return batch_input.to(device=device, dtype=dtype)
        return batch_input.to(device)
