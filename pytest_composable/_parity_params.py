"""Per-parameter checks of :func:`pytest_composable.parity.assert_sharded_parity`.

Each check works on this rank's tensors alone and returns its failures as messages.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._parity_agree import where
from ._parity_compare import (
    Difference,
    LayoutError,
    describe_layout,
    difference,
    dtensor_of,
    expected_local,
    tolerances_for,
)

__all__ = ["device_of", "local", "parameter_failures"]


def _strip(name: str, prefixes: Sequence[str]) -> str:
    for prefix in prefixes:
        name = name.replace(prefix, "")
    return name


def local(tensor: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard; any other tensor itself."""
    dtensor = dtensor_of(tensor)
    result: torch.Tensor = dtensor.to_local() if dtensor is not None else tensor
    return result


def _compare(
    what: str,
    actual: torch.Tensor,
    reference: torch.Tensor,
    rtol: float | None,
    atol: float | None,
) -> str | None:
    """The failure of one tensor (a parameter or a gradient), or ``None``."""
    dtensor = dtensor_of(actual)
    layout = ""
    try:
        if dtensor is not None:
            expected = expected_local(reference, dtensor)
            layout = (
                f"\n  local shard of a DTensor with {describe_layout(dtensor)}, compared "
                "with the reference laid out the same way on this rank"
            )
        else:
            expected = local(reference)
    except LayoutError as error:
        return f"{what} {where()} {error}"
    mine = local(actual)
    tolerances = tolerances_for([mine.dtype, expected.dtype], rtol, atol)
    found = difference(mine, expected, *tolerances)
    if found is None:
        return None
    if isinstance(found, Difference):
        return f"{what} {where()} differs from the reference: {found.describe(*tolerances)}{layout}"
    return f"{what} {where()} {found}{layout}"


def parameter_failures(
    reference: nn.Module,
    sharded: nn.Module,
    prefixes: Sequence[str],
    rtol: float | None,
    atol: float | None,
) -> list[str]:
    """Every failure of this rank, in registration order (a name mismatch ends the list:
    the pairs after it are not the same parameters)."""
    failures: list[str] = []
    pairs = list(zip(reference.named_parameters(), sharded.named_parameters(), strict=False))
    for index, ((ref_name, ref_param), (name, param)) in enumerate(pairs):
        fqn = _strip(ref_name, prefixes)
        if _strip(name, prefixes) != fqn:
            removed = f" (after removing {tuple(prefixes)})" if prefixes else ""
            return [
                *failures,
                f"parameter names differ {where()}: parameter #{index} is {ref_name!r} on the "
                f"reference and {name!r} on the sharded model{removed}",
            ]
        found = _compare(f"parameter {fqn!r}", param, ref_param, rtol, atol)
        if found:
            failures.append(found)
        grad, ref_grad = param.grad, ref_param.grad
        if (grad is None) != (ref_grad is None):
            missing, present = ("sharded model", "reference")
            if grad is not None:
                missing, present = present, missing
            failures.append(
                f"gradient of {fqn!r} {where()} is missing (None) on the {missing} but "
                f"present on the {present}"
            )
        elif grad is not None and ref_grad is not None:
            found = _compare(f"gradient of {fqn!r}", grad, ref_grad, rtol, atol)
            if found:
                failures.append(found)
    counts = (len(list(reference.parameters())), len(list(sharded.parameters())))
    if counts[0] != counts[1]:
        longer, other = (reference, "reference") if counts[0] > counts[1] else (sharded, "sharded")
        extra = list(longer.named_parameters())[len(pairs)][0]
        failures.append(
            f"parameter counts differ {where()}: the reference has {counts[0]}, the sharded "
            f"model {counts[1]}; the {other} model's {extra!r} has no counterpart"
        )
    return failures


def device_of(*models: nn.Module) -> torch.device | None:
    for model in models:
        for param in model.parameters():
            return local(param).device
    return None
