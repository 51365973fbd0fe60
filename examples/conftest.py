"""Fixtures the examples share: a one-rank gloo world and model comparisons.

The process group is module scoped: a module that asks for it gets its own,
destroyed after the module's last test, so it never overlaps a world that
another module's tests create in this process (such as the plugin's own
distributed fixtures). Its ``FileStore`` lives under the session's
temporary directory, so parallel pytest-xdist workers (each its own process
with its own temporary directory) never race for a TCP port.

The comparison fixtures compare values on real devices and, on ``meta``
(where tensors hold no values), only shape, dtype and device.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from typing import Protocol

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor

LEARNING_RATE = 0.1

# Module FQNs, parameter FQNs and state-dict keys, in order.
Fqns = tuple[list[str], list[str], list[str]]


class TensorCheck(Protocol):
    def __call__(
        self, actual: torch.Tensor, expected: torch.Tensor, *, exact: bool = False
    ) -> None: ...


class ModelCheck(Protocol):
    def __call__(
        self, actual: nn.Module, expected: nn.Module, *, grads: bool = False, exact: bool = False
    ) -> None: ...


class FqnsOf(Protocol):
    def __call__(self, model: nn.Module) -> Fqns: ...


class TrainStepCheck(Protocol):
    def __call__(self, model: nn.Module, reference: nn.Module, batch: torch.Tensor) -> None: ...


@pytest.fixture(scope="module")
def process_group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dist.ProcessGroup]:
    """The default process group: gloo, world size 1, rank 0, on the CPU."""
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("this torch build has no torch.distributed gloo backend")
    if dist.is_initialized():
        pytest.fail("a default process group already exists; these examples create their own")
    store = dist.FileStore(str(tmp_path_factory.mktemp("process_group") / "store"), 1)
    dist.init_process_group(
        "gloo", store=store, rank=0, world_size=1, timeout=datetime.timedelta(seconds=60)
    )
    try:
        group = dist.group.WORLD
        assert group is not None
        yield group
    finally:
        dist.destroy_process_group()


@pytest.fixture
def fsdp2_trains_on_cpu() -> None:
    """Skip the test where FSDP2 cannot train on CPU.

    FSDP2 orders its collectives with stream events, on CPU those of
    ``torch.cpu.Stream``, which has none on torch 2.6: there ``fully_shard`` shards on
    CPU, but its forward pass fails.
    """
    if not all(hasattr(torch.cpu.Stream, m) for m in ("record_event", "wait_event")):
        pytest.skip("torch.cpu.Stream has no record_event/wait_event: FSDP2 cannot train on CPU")


@pytest.fixture(scope="module")
def cpu_mesh(process_group: dist.ProcessGroup) -> DeviceMesh:
    """A one-dimensional CPU device mesh over the one-rank world."""
    return init_device_mesh("cpu", (1,))


def _full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor: a ``DTensor`` (as ``fully_shard`` makes) is gathered first."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def _match(actual: torch.Tensor, expected: torch.Tensor, *, exact: bool = False) -> None:
    actual, expected = _full(actual), _full(expected)
    if actual.is_meta or expected.is_meta:
        # Meta tensors hold no values: only their metadata can be compared.
        assert (actual.shape, actual.dtype, actual.device) == (
            expected.shape,
            expected.dtype,
            expected.device,
        )
    elif exact:
        torch.testing.assert_close(actual, expected, rtol=0, atol=0)
    else:
        torch.testing.assert_close(actual, expected)


def _models_match(
    actual: nn.Module, expected: nn.Module, *, grads: bool = False, exact: bool = False
) -> None:
    """Same parameter FQNs and state-dict keys, then equal state dicts (or equal gradients)."""
    params = dict(actual.named_parameters())
    expected_params = dict(expected.named_parameters())
    assert list(params) == list(expected_params)
    if grads:
        for name, param in params.items():
            grad, expected_grad = param.grad, expected_params[name].grad
            assert grad is not None, f"{name} has no gradient"
            assert expected_grad is not None, f"reference {name} has no gradient"
            _match(grad, expected_grad, exact=exact)
        return
    state, expected_state = actual.state_dict(), expected.state_dict()
    assert list(state) == list(expected_state)
    for key, value in state.items():
        _match(value, expected_state[key], exact=exact)


def _train_step_matches(model: nn.Module, reference: nn.Module, batch: torch.Tensor) -> None:
    """Forward, backward and one SGD step of ``model`` give what ``reference``'s do."""
    out, expected_out = model(batch), reference(batch)
    _match(out, expected_out)
    out.sum().backward()
    expected_out.sum().backward()
    _models_match(model, reference, grads=True)
    for module in (model, reference):
        torch.optim.SGD(module.parameters(), lr=LEARNING_RATE).step()
    _models_match(model, reference)
    _match(model(batch), reference(batch))


def _fqns(model: nn.Module) -> Fqns:
    return (
        [name for name, _ in model.named_modules()],
        [name for name, _ in model.named_parameters()],
        list(model.state_dict()),
    )


@pytest.fixture
def fqns() -> FqnsOf:
    """``fqns(model)``: its module FQNs, parameter FQNs and state-dict keys, in order."""
    return _fqns


@pytest.fixture
def assert_match() -> TensorCheck:
    """``assert_match(actual, expected, exact=False)`` for two tensors (``DTensor`` too)."""
    return _match


@pytest.fixture
def assert_models_match() -> ModelCheck:
    """``assert_models_match(actual, expected, grads=False, exact=False)`` for two models."""
    return _models_match


@pytest.fixture
def assert_train_step_matches() -> TrainStepCheck:
    """``assert_train_step_matches(model, reference, batch)``: one training step, compared."""
    return _train_step_matches
