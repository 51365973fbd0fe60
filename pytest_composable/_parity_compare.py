"""Local comparisons for :mod:`pytest_composable.parity`: tolerances, differences, shards.

Everything here works on this rank's tensors alone: no collective is made, so no
other rank decides a value.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "Difference",
    "LayoutError",
    "default_tolerances",
    "describe_layout",
    "difference",
    "dtensor_of",
    "expected_local",
    "least_precise",
]

# (rtol, atol) by dtype. float64 and float32 are torch.testing's defaults; float16
# and bfloat16 allow about four units in the last place (torch.testing one or two),
# as reductions that a sharded model runs in another order round differently.
_TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-7, 1e-7),
    torch.complex128: (1e-7, 1e-7),
    torch.float32: (1.3e-6, 1e-5),
    torch.complex64: (1.3e-6, 1e-5),
    torch.float16: (4e-3, 1e-3),
    torch.bfloat16: (3.2e-2, 1e-2),
}


def _epsilon(dtype: torch.dtype) -> float:
    """The spacing of ``dtype`` near 1: larger is less precise; 0 for exact dtypes."""
    if dtype.is_complex:
        dtype = dtype.to_real()
    if dtype.is_floating_point:
        return torch.finfo(dtype).eps
    return 0.0


def least_precise(dtypes: Sequence[torch.dtype]) -> torch.dtype:
    """The dtype of ``dtypes`` with the largest epsilon (float32 for none)."""
    if not dtypes:
        return torch.float32
    return max(dtypes, key=_epsilon)


def default_tolerances(dtype: torch.dtype) -> tuple[float, float]:
    """``(rtol, atol)`` for ``dtype``: the module's table, four epsilons for another
    floating dtype (float8 and the like), exact (0, 0) for integers and bool."""
    if dtype in _TOLERANCES:
        return _TOLERANCES[dtype]
    epsilon = _epsilon(dtype)
    return (4 * epsilon, 4 * epsilon)


def tolerances_for(
    dtypes: Sequence[torch.dtype], rtol: float | None, atol: float | None
) -> tuple[float, float]:
    """The given tolerances, each one missing taken from the least precise of ``dtypes``."""
    default_rtol, default_atol = default_tolerances(least_precise(dtypes))
    return (default_rtol if rtol is None else rtol, default_atol if atol is None else atol)


@dataclass(frozen=True)
class Difference:
    """How a tensor differs from its expected value, entry by entry."""

    count: int
    total: int
    max_abs: float
    abs_index: tuple[int, ...]
    actual: complex | float
    expected: complex | float
    max_rel: float
    rel_index: tuple[int, ...]

    def describe(self, rtol: float, atol: float) -> str:
        """One line: the largest differences, where, and how many other entries differ."""
        others = self.count - 1
        return (
            f"largest absolute difference {self.max_abs:.6g} at index {list(self.abs_index)} "
            f"(sharded {self.actual:.8g}, reference {self.expected:.8g}; atol {atol:g}), "
            f"largest relative difference {self.max_rel:.6g} at index {list(self.rel_index)} "
            f"(rtol {rtol:g}); {others} other entr{'y' if others == 1 else 'ies'} "
            f"differ{'s' if others == 1 else ''} ({self.count} of {self.total})"
        )


def _unravel(flat_index: int, shape: torch.Size) -> tuple[int, ...]:
    index: list[int] = []
    for size in reversed(shape):
        index.append(flat_index % size)
        flat_index //= size
    return tuple(reversed(index))


def _largest(values: torch.Tensor) -> tuple[float, int]:
    """The largest entry of a flat tensor and its position; a NaN counts as largest."""
    nan = values.isnan()
    if bool(nan.any()):
        return float("nan"), int(nan.nonzero()[0].item())
    position = int(values.argmax().item())
    return float(values[position].item()), position


def _scalar(value: torch.Tensor) -> complex | float:
    item = value.item()
    return item if isinstance(item, complex) else float(item)


def difference(
    actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float
) -> Difference | str | None:
    """``None`` where ``actual`` is close to ``expected`` entry by entry (``|a - e| <=
    atol + rtol * |e|``, equal infinities close, NaN never close), a :class:`Difference`
    where some entries are not, or a sentence where the shapes differ. Values are
    compared in float64 (complex128), whatever the two dtypes; meta tensors, which hold
    no values, are compared by shape only."""
    if actual.shape != expected.shape:
        return f"has shape {list(actual.shape)}, the reference {list(expected.shape)}"
    if actual.is_meta or expected.is_meta or actual.numel() == 0:
        return None
    wide = torch.complex128 if actual.is_complex() or expected.is_complex() else torch.float64
    a = actual.detach().to(dtype=wide)
    e = expected.detach().to(device=a.device, dtype=wide)
    equal = a == e  # also equal infinities, whose difference is NaN
    gap = torch.where(equal, torch.zeros((), dtype=torch.float64, device=a.device), (a - e).abs())
    close = equal | (gap <= atol + rtol * e.abs())
    count = int((~close).sum().item())
    if count == 0:
        return None
    scale = e.abs()
    relative = torch.where(gap == 0, gap, gap / scale)  # x / 0 is inf, as it should be
    max_abs, abs_at = _largest(gap.flatten())
    max_rel, rel_at = _largest(relative.flatten())
    return Difference(
        count=count,
        total=a.numel(),
        max_abs=max_abs,
        abs_index=_unravel(abs_at, a.shape),
        actual=_scalar(actual.detach().flatten()[abs_at]),
        expected=_scalar(expected.detach().flatten()[abs_at]),
        max_rel=max_rel,
        rel_index=_unravel(rel_at, a.shape),
    )


# --- DTensor layouts ----------------------------------------------------------------


class LayoutError(Exception):
    """A DTensor layout whose local shard cannot be derived from the reference."""


def dtensor_of(tensor: torch.Tensor | None) -> Any:
    """``tensor`` where it is a DTensor, else ``None`` (also without torch.distributed)."""
    if tensor is None or not dist.is_available():
        return None
    from torch.distributed.tensor import DTensor

    return tensor if isinstance(tensor, DTensor) else None


def _takes_src_data_rank() -> bool:
    from torch.distributed.tensor import distribute_tensor

    return "src_data_rank" in inspect.signature(distribute_tensor).parameters


def describe_layout(dtensor: Any) -> str:
    """``mesh (dp=2, tp=2), placements (Shard(dim=0), Replicate())``."""
    mesh = dtensor.device_mesh
    names = mesh.mesh_dim_names or tuple(f"dim{i}" for i in range(mesh.ndim))
    shape = ", ".join(f"{name}={size}" for name, size in zip(names, mesh.shape, strict=True))
    placements = ", ".join(repr(p) for p in dtensor.placements)
    return f"mesh ({shape}) on {mesh.device_type}, placements ({placements})"


def _check_placements(placements: Sequence[Any]) -> None:
    from torch.distributed.tensor import Partial, Shard

    plain_dims = [p.dim for p in placements if type(p) is Shard]
    if len(plain_dims) != len(set(plain_dims)):
        raise LayoutError(
            "shards one tensor dimension on two mesh dimensions with plain Shard placements "
            f"({', '.join(repr(p) for p in placements)}): FSDP lays such a parameter out right "
            "to left (strided, as with HSDP or FSDP + TP), which distribute_tensor() cannot "
            "reproduce, so its local shard cannot be compared; compare full_tensor() values"
        )
    if any(isinstance(p, Partial) for p in placements):
        raise LayoutError(
            f"has a Partial placement ({', '.join(repr(p) for p in placements)}): its local "
            "value is one term of a sum over ranks, not comparable on one rank; redistribute "
            "it to Shard or Replicate first"
        )


def _chunk(tensor: torch.Tensor, pieces: int, dim: int) -> list[torch.Tensor]:
    """``torch.chunk`` into exactly ``pieces``, the missing trailing ones empty (as
    DTensor and FSDP shard an uneven dimension)."""
    chunks = list(torch.chunk(tensor, pieces, dim=dim))
    while len(chunks) < pieces:
        chunks.append(tensor.narrow(dim, tensor.size(dim), 0))
    return chunks


def _chunk_locally(tensor: torch.Tensor, mesh: Any, placements: Sequence[Any]) -> torch.Tensor:
    """The local shard of ``tensor`` under ``placements`` on ``mesh`` at this rank's
    coordinate, by chunking alone: what ``distribute_tensor(..., src_data_rank=None)``
    computes, for a torch (2.6) whose ``distribute_tensor`` always scatters."""
    from torch.distributed.tensor import Replicate, Shard

    coordinate = mesh.get_coordinate()
    local = tensor.detach()
    if coordinate is None:  # this rank is not in the mesh: it holds nothing
        return local.new_empty(0)
    for mesh_dim, placement in enumerate(placements):
        pieces = mesh.size(mesh_dim)
        at = coordinate[mesh_dim]
        split_factor = getattr(placement, "split_factor", None)
        if isinstance(placement, Replicate):
            continue
        if split_factor is not None:  # _StridedShard (a Shard subclass on 2.6)
            dim = placement.dim % local.ndim
            groups = _chunk(local, int(split_factor), dim)
            local = torch.cat([_chunk(group, pieces, dim)[at] for group in groups], dim=dim)
        elif isinstance(placement, Shard):
            local = _chunk(local, pieces, placement.dim % local.ndim)[at]
        else:
            raise LayoutError(f"has a placement this check does not know: {placement}")
    return local.contiguous()


def expected_local(reference: torch.Tensor, dtensor: Any) -> torch.Tensor:
    """What ``dtensor``'s local shard must equal: ``reference`` laid out with
    ``dtensor``'s mesh and placements, computed on this rank without a collective.

    Raises :class:`LayoutError` for a layout that cannot be derived that way."""
    placements = tuple(dtensor.placements)
    _check_placements(placements)
    reference_dtensor = dtensor_of(reference)
    if reference_dtensor is not None:
        if (
            reference_dtensor.device_mesh != dtensor.device_mesh
            or tuple(reference_dtensor.placements) != placements
        ):
            raise LayoutError(
                f"is a DTensor on the reference too, laid out as {describe_layout(reference)}, "
                f"unlike the sharded model's {describe_layout(dtensor)}; a reference holds "
                "whole tensors (or the same layout)"
            )
        local: torch.Tensor = reference_dtensor.to_local()
        return local
    if reference.is_meta:
        return _chunk_locally(reference, dtensor.device_mesh, placements)
    if _takes_src_data_rank():
        from torch.distributed.tensor import distribute_tensor

        distributed = distribute_tensor(
            reference.detach(), dtensor.device_mesh, placements, src_data_rank=None
        )
        result: torch.Tensor = distributed.to_local()
        return result
    return _chunk_locally(reference, dtensor.device_mesh, placements)
