"""The FSDP2 tests' MLPs: :class:`MLP` and :class:`MLPStack`.

Written for this project from PyTorch's ``torch.testing._internal.common_fsdp``
(``MLP`` and ``MLPStack``; the same in torch 2.6 and 2.13). They keep upstream's
constructor signatures, attribute and submodule names, parameter and buffer
names, shapes and construction order, so after ``torch.manual_seed(s)`` a model
built here on CPU holds exactly the tensors upstream's would, and
:meth:`MLPStack.parallelize` gives the same placements.

Nothing here imports ``torch.distributed`` until :meth:`MLPStack.parallelize`
is called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh

__all__ = [
    "MLP",
    "SMALL_MLP_BATCH",
    "SMALL_MLP_DIM",
    "MLPStack",
    "small_mlp",
    "small_mlp_input",
    "small_mlp_stack",
]

# The small sizes the ``mlp`` and ``mlp_stack`` fixtures use.
SMALL_MLP_DIM = 16
SMALL_MLP_BATCH = 2


class MLP(nn.Module):
    """``in_proj -> relu -> out_proj -> relu`` (``+ buffer``): the FSDP2 tests' MLP.

    From ``torch.testing._internal.common_fsdp.MLP``, the model most of
    PyTorch's ``fully_shard`` tests shard. ``in_proj`` is
    ``Linear(dim, dim_multiplier * dim)``, ``out_proj`` its reverse, both with
    ``bias``. With ``with_buffer`` a persistent ``buffer`` of shape ``(dim,)``
    (``torch.randn``) is added to the output; without it ``buffer`` is ``None``.
    Input ``(..., dim)``, output ``(..., dim)``.

    :meth:`reset_parameters` re-draws only the buffer (``nn.init.normal_``), as
    upstream's does, for ``fully_shard`` on meta followed by ``to_empty``.
    """

    buffer: torch.Tensor | None

    def __init__(
        self,
        dim: int,
        device: torch.device | None = None,
        *,
        bias: bool = True,
        with_buffer: bool = False,
        dim_multiplier: int = 4,
    ) -> None:
        super().__init__()
        self.in_proj = nn.Linear(dim, dim_multiplier * dim, device=device, bias=bias)
        self.out_proj = nn.Linear(dim_multiplier * dim, dim, device=device, bias=bias)
        if with_buffer:
            self.register_buffer("buffer", torch.randn((dim,), device=device))
        else:
            self.buffer = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.in_proj(x)
        z = F.relu(z)
        z = self.out_proj(z)
        z = F.relu(z)
        if self.buffer is not None:
            z = z + self.buffer
        return z

    def reset_parameters(self) -> None:
        """Re-draw ``buffer`` from a standard normal, when there is one."""
        if self.buffer is not None:
            torch.nn.init.normal_(self.buffer)


class MLPStack(nn.Sequential):
    """Three :class:`MLP` of width ``mlp_dim`` (multipliers 3, 4, 3): the FSDP + TP tests' model.

    From ``torch.testing._internal.common_fsdp.MLPStack``. The multiplier 3
    makes the tensor-parallel shards uneven on purpose. With
    ``with_seq_parallel`` a fourth module, ``LayerNorm(mlp_dim, bias=False)``,
    follows. Children are named ``"0"``..``"3"``. Input ``(..., mlp_dim)``,
    output the same shape; sequence-parallel (after :meth:`parallelize` with
    ``with_seq_parallel``) it shards dimension 1, so give it
    ``(B, S, mlp_dim)``.
    """

    def __init__(self, mlp_dim: int, *, with_seq_parallel: bool = False) -> None:
        modules: list[nn.Module] = [
            # A multiplier of 3 exercises uneven tensor-parallel shards.
            MLP(mlp_dim, dim_multiplier=3),
            MLP(mlp_dim),
            MLP(mlp_dim, dim_multiplier=3),
        ]
        if with_seq_parallel:
            modules.append(nn.LayerNorm(mlp_dim, bias=False))
        super().__init__(*modules)
        self.with_seq_parallel = with_seq_parallel

    def parallelize(
        self,
        tp_mesh: DeviceMesh,
        dp_mesh: DeviceMesh,
        use_activation_checkpointing: bool,
        **fsdp_kwargs: Any,
    ) -> MLPStack:
        """Tensor-parallel over ``tp_mesh``, then ``fully_shard`` over ``dp_mesh``; returns self.

        As upstream: ``in_proj`` colwise and ``out_proj`` rowwise in every MLP
        (all kept as DTensors but the last ``out_proj``, whose output is
        ``Shard(1)`` with ``with_seq_parallel`` and replicated without), the
        ``LayerNorm`` sequence-parallel; then every MLP is
        ``fully_shard``-ed (after composable ``checkpoint`` when
        ``use_activation_checkpointing``), and the stack itself last.
        ``fsdp_kwargs`` go to every ``fully_shard`` call.
        """
        from torch.distributed._composable.checkpoint_activation import checkpoint
        from torch.distributed.fsdp import fully_shard
        from torch.distributed.tensor import Shard
        from torch.distributed.tensor.parallel import (
            ColwiseParallel,
            ParallelStyle,
            RowwiseParallel,
            SequenceParallel,
            parallelize_module,
        )

        last_out: ParallelStyle = (
            RowwiseParallel(output_layouts=Shard(1))
            if self.with_seq_parallel
            else RowwiseParallel()
        )
        plan: dict[str, ParallelStyle] = {
            # use_local_output=False keeps the uneven activations as DTensors.
            "0.in_proj": ColwiseParallel(use_local_output=False),
            "0.out_proj": RowwiseParallel(use_local_output=False),
            "1.in_proj": ColwiseParallel(use_local_output=False),
            "1.out_proj": RowwiseParallel(use_local_output=False),
            "2.in_proj": ColwiseParallel(use_local_output=False),
            "2.out_proj": last_out,
        }
        if self.with_seq_parallel:
            plan["3"] = SequenceParallel(sequence_dim=1)
        parallelize_module(self, device_mesh=tp_mesh, parallelize_plan=plan)
        for module in self:
            if isinstance(module, nn.LayerNorm):
                continue
            if use_activation_checkpointing:
                checkpoint(module)
            fully_shard(module, mesh=dp_mesh, **fsdp_kwargs)
        fully_shard(self, mesh=dp_mesh, **fsdp_kwargs)
        return self


def small_mlp(device: torch.device | str | None = None) -> MLP:
    """``MLP(16, device)``: 16 -> 64 -> 16, 2,128 parameters, no buffer."""
    return MLP(SMALL_MLP_DIM, torch.device(device) if device is not None else None)


def small_mlp_stack(
    device: torch.device | str | None = None, *, with_seq_parallel: bool = False
) -> MLPStack:
    """``MLPStack(16)``: 16 -> 48 -> 16 -> 64 -> 16 -> 48 -> 16, 5,328 parameters.

    With ``with_seq_parallel`` a ``LayerNorm(16, bias=False)`` follows (5,344
    parameters). ``MLPStack`` takes no device, so it is built under
    ``with torch.device(device)``: on CPU it draws exactly what
    ``MLPStack(16)`` would.
    """
    if device is None:
        return MLPStack(SMALL_MLP_DIM, with_seq_parallel=with_seq_parallel)
    with torch.device(device):
        return MLPStack(SMALL_MLP_DIM, with_seq_parallel=with_seq_parallel)


def small_mlp_input(
    device: torch.device | str | None = None, *, seq_len: int | None = None
) -> torch.Tensor:
    """A ``(2, 16)`` float input for :func:`small_mlp` and :func:`small_mlp_stack`.

    With ``seq_len``, ``(2, seq_len, 16)``: the shape a sequence-parallel
    :class:`MLPStack` shards on dimension 1. Drawn with ``torch.randn`` from
    the global generator.
    """
    if seq_len is None:
        return torch.randn((SMALL_MLP_BATCH, SMALL_MLP_DIM), device=device)
    return torch.randn((SMALL_MLP_BATCH, seq_len, SMALL_MLP_DIM), device=device)
