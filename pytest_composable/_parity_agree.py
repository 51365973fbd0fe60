"""The ranks agree on a parity check's outcome before any of them raises.

Each rank judges its own tensors; then one small collective (an ``all_reduce`` of
one flag per rank over the default group) tells every rank which ranks failed,
so a failure on one rank never leaves the others waiting in the next collective,
and a rank that did not fail raises too, naming the ranks that did.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.distributed as dist

__all__ = [
    "FailedOnAnotherRank",
    "current_step",
    "failed_ranks",
    "raise_if_any_failed",
    "where",
    "with_step",
]

# How long a rank that did not fail waits before raising, so that the failing rank's
# report, the root cause, reaches the test's report first and heads it.
_GRACE_S = 0.25


class FailedOnAnotherRank(AssertionError):
    """A parity check failed on other ranks, not on this one: raised on every rank where
    the check passed, once the ranks agreed that some rank failed."""


FailedOnAnotherRank.__module__ = "pytest_composable.parity"  # where users import it from


_STEP: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "pytest_composable_parity_step", default=None
)


@contextmanager
def with_step(step: int) -> Iterator[None]:
    """Name ``step`` in the failures of the checks made inside the block."""
    token = _STEP.set(step)
    try:
        yield
    finally:
        _STEP.reset(token)


def current_step() -> int | None:
    """The step :func:`with_step` names, if any."""
    return _STEP.get()


def _in_group() -> bool:
    return dist.is_available() and dist.is_initialized()


def where(step: int | None = None) -> str:
    """``on rank 1 of 2 at step 3``: this process's place, for a message."""
    place = (
        f"on rank {dist.get_rank()} of {dist.get_world_size()}"
        if _in_group()
        else "outside a process group"
    )
    step = current_step() if step is None else step
    return place if step is None else f"{place} at step {step}"


def _flag_device(hint: torch.device | None) -> torch.device:
    """Where the flags travel: CPU for gloo (and fake, mpi), else the models' device."""
    backend = str(dist.get_backend())
    if any(name in backend for name in ("gloo", "fake", "mpi")):
        return torch.device("cpu")
    if hint is not None and hint.type not in ("cpu", "meta"):
        return hint
    if backend == "nccl" and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def failed_ranks(failed: bool, device: torch.device | None = None) -> list[int]:
    """The ranks (of the default group) that failed, as every rank learns it from one
    ``all_reduce`` of a flag per rank; outside a process group, no collective: ``[0]``
    where ``failed``, else ``[]``. ``device`` is a hint where the backend needs an
    accelerator tensor (nccl)."""
    if not _in_group():
        return [0] if failed else []
    flags = torch.zeros(dist.get_world_size(), dtype=torch.int32, device=_flag_device(device))
    flags[dist.get_rank()] = int(failed)
    dist.all_reduce(flags)
    return [int(rank) for rank in flags.nonzero().flatten().tolist()]


def _names(ranks: Sequence[int]) -> str:
    return ", ".join(str(rank) for rank in ranks)


def raise_if_any_failed(
    check: str,
    failure: str | None,
    device: torch.device | None = None,
    step: int | None = None,
    cause: BaseException | None = None,
) -> None:
    """Agree with the other ranks on ``check``'s outcome, then raise ``AssertionError``
    on every rank if any rank failed: ``failure`` (this rank's message) where this rank
    failed, else (a :class:`FailedOnAnotherRank`, a moment later) a message naming the
    ranks that did."""
    __tracebackhide__ = True
    ranks = failed_ranks(failure is not None, device)
    if not ranks:
        return
    if failure is not None:
        others = [rank for rank in ranks if rank != dist.get_rank()] if _in_group() else []
        if others:
            failure += f"\n{check} failed on rank(s) {_names(others)} as well"
        raise AssertionError(failure) from cause
    world = dist.get_world_size()
    time.sleep(_GRACE_S)
    raise FailedOnAnotherRank(
        f"{check} failed on rank(s) {_names(ranks)} of {world}, not here ({where(step)}, "
        f"where everything matched): see the report of rank {ranks[0]}"
    )
