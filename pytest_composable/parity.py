"""Parity of a sharded model with its unsharded reference, checked rank by rank.

:func:`assert_sharded_parity` checks that each parameter (and gradient) of a model
sharded with ``fully_shard``, HSDP, tensor parallelism or ``replicate`` equals its
reference's, laid out the same way; :func:`assert_training_parity` trains both side
by side and compares their losses at every step.

Every comparison is local: a ``DTensor`` parameter's local shard is compared with
the reference parameter laid out with that parameter's mesh and placements on this
rank (``distribute_tensor(..., src_data_rank=None)``, or the same chunking where
torch's ``distribute_tensor`` lacks ``src_data_rank``), so no collective decides a
value. Then the ranks agree, with one ``all_reduce`` of a flag per rank over the
default process group, whether any of them failed, and if one did every rank
raises: a failing rank an ``AssertionError`` with its cause in the first line (the
parameter's fully qualified name, the rank, the step where there is one, the
largest absolute and relative differences and how many other entries differ); every
other rank, a moment later (so that the failing rank's report arrives first and
heads the test's report), a :class:`FailedOnAnotherRank`, an ``AssertionError``
naming the rank(s) that failed. So a failure on one rank never leaves the others
waiting; every rank of the default group must call the check, as it would any
collective. Outside a process group no collective is made.

Tolerances, where ``rtol``/``atol`` are not given (either one given alone keeps the
other's default), come from the less precise of the two models' dtypes (for the
loss: of the two losses' and the parameters' dtypes); a value passes where
``|sharded - reference| <= atol + rtol * |reference|``:

=================================  ========  ========
dtype                              rtol      atol
=================================  ========  ========
float64, complex128                1e-7      1e-7
float32, complex64                 1.3e-6    1e-5
float16                            4e-3      1e-3
bfloat16                           3.2e-2    1e-2
another floating dtype (float8)    4 eps     4 eps
integers, bool                     0         0
=================================  ========  ========

float64 and float32 are ``torch.testing``'s defaults; float16 and bfloat16 allow
about four units in the last place (``torch.testing`` one or two), since a sharded
model reduces in another order. Values are compared in float64 whatever the dtypes; NaN
never equals NaN; tensors on ``meta`` hold no values and are compared by shape only
(as in a fake world on meta).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeAlias

import torch
from torch import nn

from ._parity_agree import FailedOnAnotherRank, raise_if_any_failed, where, with_step
from ._parity_compare import Difference, difference, tolerances_for
from ._parity_params import device_of, parameter_failures
from ._parity_train import (
    Inputs,
    default_forward,
    default_loss,
    default_optimizer,
    floating_dtypes,
    items,
    loss_value,
    rng_devices,
    rng_state,
    set_rng_state,
)

__all__ = [
    "FailedOnAnotherRank",
    "Inputs",
    "OptimizerFactory",
    "assert_sharded_parity",
    "assert_training_parity",
]

OptimizerFactory: TypeAlias = Callable[[Iterator[nn.Parameter]], torch.optim.Optimizer]
"""Builds an optimizer from a model's ``parameters()``."""


# --- assert_sharded_parity ------------------------------------------------------------


def assert_sharded_parity(
    reference: nn.Module,
    sharded: nn.Module,
    *,
    prefixes_to_ignore: Sequence[str] = (),
    rtol: float | None = None,
    atol: float | None = None,
) -> None:
    """Assert that ``sharded`` holds the parameters and gradients of ``reference``.

    Parameters are taken in registration order (``named_parameters()``) and checked
    pair by pair:

    - the names match once every prefix of ``prefixes_to_ignore`` is removed from
      both (``("_checkpoint_wrapped_module.",)`` for ``checkpoint_wrapper``,
      ``("_orig_mod.",)`` for ``torch.compile``; ``fully_shard`` and ``replicate``
      keep names), and both models have as many parameters;
    - a ``DTensor`` parameter's local shard equals the reference parameter laid
      out with that parameter's mesh and placements on this rank, computed locally
      (``distribute_tensor(ref, mesh, placements, src_data_rank=None)`` where torch
      has ``src_data_rank``, the same chunking by hand where it has not), with
      ``Shard``, ``_StridedShard`` (FSDP + TP) and ``Replicate`` placements; a plain
      parameter equals its reference;
    - a gradient is present on both or absent on both, and equal in the same sense
      where present.

    Two plain ``Shard`` placements of one tensor dimension, as FSDP's ``(Shard(0),
    Shard(0))``, fail with a message saying so: FSDP lays that out right to left,
    which ``distribute_tensor`` cannot reproduce; so does a ``Partial`` placement.

    Called inside :func:`assert_training_parity`'s ``step_hook``, its messages name
    the step. Each rank judges its own shards; then the ranks agree (one small
    collective on the default group, none outside a process group) and every rank
    raises ``AssertionError`` if any failed, the failing rank with its first failure
    in the first line (and the others after it), every other rank naming the failing
    rank(s) (:class:`FailedOnAnotherRank`). Tolerances: see the module's table.
    """
    __tracebackhide__ = True
    failures: list[str] = []
    cause: BaseException | None = None
    try:
        failures = parameter_failures(reference, sharded, tuple(prefixes_to_ignore), rtol, atol)
    except Exception as error:  # judged here, so the other ranks are not left waiting
        failures = [f"assert_sharded_parity raised {type(error).__name__} {where()}: {error}"]
        cause = error
    failure = None
    if failures:
        failure = failures[0]
        if len(failures) > 1:
            failure += f"\n{len(failures) - 1} more failure(s) {where()}:\n" + "\n".join(
                f"- {line.splitlines()[0]}" for line in failures[1:]
            )
    raise_if_any_failed(
        "assert_sharded_parity", failure, device_of(sharded, reference), cause=cause
    )


# --- assert_training_parity -----------------------------------------------------------


def assert_training_parity(
    reference: nn.Module,
    sharded: nn.Module,
    inputs: Inputs,
    *,
    steps: int = 5,
    optimizer: OptimizerFactory | None = None,
    loss: Callable[[Any], torch.Tensor] | None = None,
    forward: Callable[[nn.Module, Any], Any] | None = None,
    step_hook: Callable[[int, nn.Module, nn.Module], None] | None = None,
    rtol: float | None = None,
    atol: float | None = None,
) -> list[tuple[float, float]]:
    """Train ``reference`` and ``sharded`` side by side for ``steps`` steps and assert
    that their losses agree at every step, on every rank.

    Each step (counted from 0): both optimizers' ``zero_grad()``; the reference's
    forward, loss and backward; the same for ``sharded``, after restoring the random
    state the reference's forward began with (the CPU generator and that of each
    device the parameters live on), so dropout draws the same masks in both; the
    losses are compared (then the ranks agree, as in
    :func:`assert_sharded_parity`, and all raise if any rank's losses differ);
    ``step_hook(step, reference, sharded)``, if given, between backward and the
    optimizer step (an :func:`assert_sharded_parity` there names the step in its
    messages; it may also all-reduce the reference's gradients); then both
    optimizers step. The gradients of the last step are left in place.

    ``inputs``: a tensor or a tuple (the same item every step), a list with one item
    per step (fewer items than ``steps`` is a ``ValueError``), or a callable from the
    step to its item. An item is a tensor (``model(item)``) or a tuple of positional
    arguments (``model(*item)``); ``forward(model, item)`` replaces that call, for
    keyword arguments and custom forwards. ``loss`` maps the output to a scalar
    (default ``output.sum()``). ``optimizer`` builds an optimizer from parameters,
    called once per model; the default is SGD with lr 1e-2 and momentum 0.9. Not
    Adam: Adam normalises the gradient, so it is blind to a constant factor in it,
    and would hide a wrong gradient divisor (say a sum over ranks left undivided).

    Each rank compares its own losses. A plain reference fed the same inputs on every
    rank matches FSDP, HSDP and FSDP + TP models (they average gradients over ranks
    that all saw the same data). Where ranks feed different inputs, the reference's
    gradients would be its own rank's only: ``replicate`` the reference (it averages
    them), or all-reduce its gradients (divided by the world size) in ``step_hook``.

    Returns the losses as floats, one ``(reference_loss, sharded_loss)`` pair per
    step. Tolerances default from the less precise dtype of the losses and the
    models' parameters (see the module's table).
    """
    __tracebackhide__ = True
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    item_at = items(inputs, steps)
    build = optimizer or default_optimizer
    optimizers = (build(reference.parameters()), build(sharded.parameters()))
    loss_of = loss or default_loss
    call = forward or default_forward
    devices = rng_devices(reference, sharded)
    hint = device_of(sharded, reference)
    dtypes = floating_dtypes(reference, sharded)
    losses: list[tuple[float, float]] = []
    for step in range(steps):
        item = item_at(step)
        for optim in optimizers:
            optim.zero_grad()
        state = rng_state(devices)
        reference_loss = loss_of(call(reference, item))
        torch.autograd.backward(reference_loss)
        set_rng_state(state)
        sharded_loss = loss_of(call(sharded, item))
        torch.autograd.backward(sharded_loss)
        pair = (loss_value(reference_loss), loss_value(sharded_loss))
        losses.append(pair)
        tolerances = tolerances_for([*dtypes, reference_loss.dtype, sharded_loss.dtype], rtol, atol)
        found = difference(
            torch.tensor(pair[1], dtype=torch.float64),
            torch.tensor(pair[0], dtype=torch.float64),
            *tolerances,
        )
        failure = None
        if isinstance(found, Difference):
            rtol_, atol_ = tolerances
            failure = (
                f"loss {where(step)} differs from the reference's: sharded {pair[1]:.8g}, "
                f"reference {pair[0]:.8g}; absolute difference {found.max_abs:.6g} "
                f"(atol {atol_:g}), relative difference {found.max_rel:.6g} (rtol {rtol_:g})"
            )
        raise_if_any_failed("assert_training_parity", failure, hint, step=step)
        if step_hook is not None:
            with with_step(step):
                step_hook(step, reference, sharded)
        for optim in optimizers:
            optim.step()
    return losses
