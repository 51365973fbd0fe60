"""The tensor-parallel tests' toy transformer: :class:`ModelArgs` and :class:`Transformer`.

Written for this project from PyTorch's
``torch.testing._internal.distributed._tensor.common_dtensor`` (``ModelArgs``,
``Attention``, ``FeedForward``, ``TransformerBlock``, ``Transformer``), the
dense model PyTorch's DTensor, tensor-parallel and FSDP2 + TP tests use, itself
partly inspired by nanoGPT. It follows **torch 2.13**'s definitions, a superset
of torch 2.6's:

* :class:`ModelArgs` has 2.13's ``num_experts`` field (2.6 has none), default
  ``0``. The mixture-of-experts variant is not included: building a block with
  ``num_experts > 0``, or parallelizing with an ``ep_mesh``, raises
  ``ValueError``.
* :meth:`Transformer.parallelize` takes 2.13's arguments,
  ``(module, tp_mesh, use_seq_parallel, local_output_for_attn=False,
  ep_mesh=None)``; torch 2.6 names the mesh ``device_mesh``. The plans and
  placements are the same in both.
* :class:`TransformerBlock` has 2.13's ``has_experts`` attribute (always
  ``False`` here).
* Invalid arguments raise ``ValueError`` (``TypeError`` for a module that is
  no :class:`Transformer`) where upstream raises ``AssertionError``.

Module, parameter and buffer names, shapes and construction order are
upstream's, so after ``torch.manual_seed(s)`` a model built here holds exactly
the tensors upstream's would, and gives the same output.

Nothing here imports ``torch.distributed`` until :meth:`Transformer.parallelize`
is called.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.tensor.parallel import ParallelStyle

__all__ = [
    "SMALL_TRANSFORMER_BATCH",
    "SMALL_TRANSFORMER_SEQ_LEN",
    "Attention",
    "FeedForward",
    "ModelArgs",
    "Transformer",
    "TransformerBlock",
    "small_transformer",
    "small_transformer_args",
    "small_transformer_input",
]

# The input the ``transformer`` fixture's model takes: (batch, sequence) token ids.
SMALL_TRANSFORMER_BATCH = 2
SMALL_TRANSFORMER_SEQ_LEN = 8

_NO_EXPERTS = (
    "ModelArgs.num_experts={n}: pytest_composable's Transformer is the dense model only; "
    "torch's mixture-of-experts variant (num_experts > 0, ep_mesh) is not included"
)


@dataclass
class ModelArgs:
    """The toy transformer's hyper-parameters: torch 2.13's ``ModelArgs``, defaults included.

    From ``torch.testing._internal.distributed._tensor.common_dtensor``. A
    superset of torch 2.6's (which has no ``num_experts``). ``num_experts``
    must stay ``0``: the mixture-of-experts variant is not included.
    """

    n_layers: int = 2
    vocab_size: int = 8
    max_seq_len: int = 16
    dim: int = 16
    n_heads: int = 4
    dropout_p: float = 0.1
    use_attn_mask: bool = True
    weight_tying: bool = True
    checkpoint_activations: bool = False
    num_experts: int = 0


class Attention(nn.Module):
    """Causal multi-head self-attention: ``wq``, ``wk``, ``wv``, ``wo`` (``dim x dim``, no bias).

    From torch's ``Attention``
    (``torch.testing._internal.distributed._tensor.common_dtensor``, 2.13).
    Runs ``F.scaled_dot_product_attention`` (causal when ``use_attn_mask``,
    dropout ``dropout_p`` in training only), then ``wo`` and a residual
    dropout. Input and output ``(B, S, dim)``.
    ``n_heads`` is the number of heads this rank computes:
    :meth:`Transformer.parallelize` divides it by the tensor-parallel size when
    ``local_output_for_attn``.
    """

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        if args.dim % args.n_heads != 0:
            raise ValueError(
                f"ModelArgs.dim ({args.dim}) must be divisible by n_heads ({args.n_heads})"
            )
        self.head_dim = args.dim // args.n_heads
        self.n_heads = args.n_heads
        self.dropout_p = args.dropout_p
        self.resid_dropout = nn.Dropout(args.dropout_p)
        self.use_attn_mask = args.use_attn_mask

        self.wq = nn.Linear(args.dim, args.dim, bias=False)
        self.wk = nn.Linear(args.dim, args.dim, bias=False)
        self.wv = nn.Linear(args.dim, args.dim, bias=False)
        self.wo = nn.Linear(args.dim, args.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bsz, seq_len, _ = x.size()
        queries, keys, values = self.wq(x), self.wk(x), self.wv(x)
        queries = queries.view(bsz, seq_len, self.n_heads, self.head_dim)
        keys = keys.view(bsz, seq_len, self.n_heads, self.head_dim)
        values = values.view(bsz, seq_len, self.n_heads, self.head_dim)

        queries = queries.transpose(1, 2)  # (bsz, n_heads, seq_len, head_dim)
        keys = keys.transpose(1, 2)
        values = values.transpose(1, 2)

        output = F.scaled_dot_product_attention(
            queries,
            keys,
            values,
            None,
            self.dropout_p if self.training else 0,
            self.use_attn_mask,
        )
        output = output.transpose(1, 2).reshape(bsz, seq_len, -1)
        return self.resid_dropout(self.wo(output))  # type: ignore[no-any-return]


class FeedForward(nn.Module):
    """``w1 -> gelu -> w2 -> resid_dropout``, ``dim -> hidden_dim -> dim`` with biases.

    From torch's ``FeedForward``
    (``torch.testing._internal.distributed._tensor.common_dtensor``, 2.13).
    Input and output ``(..., dim)``.
    """

    def __init__(self, dim: int, hidden_dim: int, dropout_p: float) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim)
        self.gelu = nn.GELU()
        self.w2 = nn.Linear(hidden_dim, dim)
        self.resid_dropout = nn.Dropout(dropout_p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resid_dropout(self.w2(self.gelu(self.w1(x))))  # type: ignore[no-any-return]


class TransformerBlock(nn.Module):
    """Pre-norm block: ``x + attention(attention_norm(x))``, then ``h + feed_forward(ffn_norm(h))``.

    From torch's ``TransformerBlock``
    (``torch.testing._internal.distributed._tensor.common_dtensor``, 2.13).
    The feed-forward hidden size is ``4 * dim``. ``has_experts`` is always
    ``False``: ``args.num_experts > 0`` raises ``ValueError``. Input and output ``(B, S, dim)``.
    """

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        if args.num_experts > 0:
            raise ValueError(_NO_EXPERTS.format(n=args.num_experts))
        self.attention_norm = nn.LayerNorm(args.dim)
        self.attention = Attention(args)
        self.ffn_norm = nn.LayerNorm(args.dim)
        self.has_experts = False
        self.feed_forward = FeedForward(args.dim, hidden_dim=4 * args.dim, dropout_p=args.dropout_p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x))
        return h + self.feed_forward(self.ffn_norm(h))  # type: ignore[no-any-return]


class Transformer(nn.Module):
    """A toy decoder-only transformer (nanoGPT-like): token ids ``(B, S)`` to logits.

    The logits are float32, ``(B, S, vocab_size)``.

    From torch's ``Transformer``
    (``torch.testing._internal.distributed._tensor.common_dtensor``, 2.13):
    ``tok_embeddings`` and ``pos_embeddings`` (learned), ``dropout``,
    ``n_layers`` :class:`TransformerBlock` in ``layers``, a final ``norm``
    and the ``output`` projection (no bias), whose weight *is*
    ``tok_embeddings.weight`` when ``weight_tying`` (so
    ``named_parameters()`` lists it once). ``S`` may not exceed
    ``max_seq_len``. With ``checkpoint_activations`` every block runs under
    non-reentrant ``torch.utils.checkpoint``.

    Like upstream, the constructor takes no device: build it under
    ``with torch.device(...)`` to place it elsewhere than the default device.
    Set ``dropout_p=0`` for deterministic training-mode outputs.
    """

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        if args.vocab_size is None:
            raise ValueError("ModelArgs.vocab_size must not be None")
        if args.max_seq_len is None:
            raise ValueError("ModelArgs.max_seq_len must not be None")
        if args.num_experts > 0:
            raise ValueError(_NO_EXPERTS.format(n=args.num_experts))
        self.model_args = args
        self.max_seq_len = args.max_seq_len
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.pos_embeddings = nn.Embedding(args.max_seq_len, args.dim)
        self.dropout = nn.Dropout(args.dropout_p)
        self.layers = nn.ModuleList()
        for _ in range(args.n_layers):
            self.layers.append(TransformerBlock(args))
        self.norm = nn.LayerNorm(args.dim)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        if args.weight_tying:
            self.output.weight = self.tok_embeddings.weight
        self.checkpoint_activations = args.checkpoint_activations

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        _bsz, seq_len = tokens.size()
        if seq_len > self.max_seq_len:
            raise ValueError(
                f"sequence length {seq_len} exceeds ModelArgs.max_seq_len ({self.max_seq_len})"
            )
        h = self.tok_embeddings(tokens)
        pos = torch.arange(0, seq_len, device=tokens.device)
        p = self.pos_embeddings(pos)  # (seq_len, dim)
        h = h + p
        h = self.dropout(h)
        for layer in self.layers:
            if self.checkpoint_activations:
                h = torch.utils.checkpoint.checkpoint(layer, h, use_reentrant=False)
            else:
                h = layer(h)
        h = self.norm(h)
        return self.output(h).float()  # type: ignore[no-any-return]

    @staticmethod
    def parallelize(
        module: Transformer,
        tp_mesh: DeviceMesh | None,
        use_seq_parallel: bool,
        local_output_for_attn: bool = False,
        ep_mesh: DeviceMesh | None = None,
    ) -> nn.Module:
        """Tensor-parallel ``module`` over the 1-D ``tp_mesh`` in place, as upstream; returns it.

        Embeddings rowwise (their output ``Shard(1)``/``Shard(0)`` with
        ``use_seq_parallel``, replicated without), ``wq``/``wk``/``wv`` and
        ``feed_forward.w1`` colwise, ``wo`` and ``feed_forward.w2`` rowwise,
        ``output`` colwise with a replicated output; with ``use_seq_parallel``
        the norms are sequence-parallel and each ``attention`` gathers its
        input. When ``weight_tying``, ``output.weight`` is set back to
        ``tok_embeddings.weight`` (so it ends rowwise-sharded, ``Shard(0)``).

        ``local_output_for_attn`` makes ``wq``/``wk``/``wv`` return local
        tensors and divides each ``attention.n_heads`` by the mesh size, so
        attention runs on plain tensors. **On CPU, tensor-parallel attention
        runs only with** ``local_output_for_attn=True``: without it attention
        runs on DTensors, and torch (2.6 to 2.13 at least) has no sharding
        rule for ``aten._scaled_dot_product_flash_attention_for_cpu``, the
        operator ``scaled_dot_product_attention`` dispatches to on CPU, so the
        forward raises ``NotImplementedError``. Torch's own model does the
        same.

        ``tp_mesh`` is required here, and ``ep_mesh`` (torch 2.13's expert
        parallelism) raises ``ValueError``: the mixture-of-experts variant is
        not included. torch 2.6 calls ``tp_mesh`` ``device_mesh``.
        """
        if not isinstance(module, Transformer):
            raise TypeError(f"Transformer.parallelize requires a Transformer, got {module!r}")
        if ep_mesh is not None:
            raise ValueError(
                "Transformer.parallelize: ep_mesh (expert parallelism) is not supported; "
                "pytest_composable's Transformer is the dense model only"
            )
        if tp_mesh is None:
            raise ValueError("Transformer.parallelize needs a tp_mesh")

        return _tensor_parallel(module, tp_mesh, use_seq_parallel, local_output_for_attn)


def _tensor_parallel(
    module: Transformer,
    tp_mesh: DeviceMesh,
    use_seq_parallel: bool,
    local_output_for_attn: bool,
) -> Transformer:
    """The plan of :meth:`Transformer.parallelize`, applied (its arguments checked)."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        PrepareModuleInput,
        RowwiseParallel,
        SequenceParallel,
        parallelize_module,
    )

    root_plan: dict[str, ParallelStyle]
    if use_seq_parallel:
        root_plan = {
            "tok_embeddings": RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1)),
            "pos_embeddings": RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(0)),
            "norm": SequenceParallel(),
        }
    else:
        root_plan = {
            "tok_embeddings": RowwiseParallel(
                input_layouts=Replicate(), output_layouts=Replicate()
            ),
            "pos_embeddings": RowwiseParallel(
                input_layouts=Replicate(), output_layouts=Replicate()
            ),
        }
    parallelize_module(module, tp_mesh, root_plan)

    for layer in _blocks(module):
        layer_plan: dict[str, ParallelStyle] = {}
        if use_seq_parallel:
            layer_plan["attention"] = PrepareModuleInput(
                input_layouts=Shard(1),
                desired_input_layouts=Replicate(),
            )
            layer_plan["attention_norm"] = SequenceParallel()
            layer_plan["ffn_norm"] = SequenceParallel()
        layer_plan["attention.wq"] = ColwiseParallel(use_local_output=local_output_for_attn)
        layer_plan["attention.wk"] = ColwiseParallel(use_local_output=local_output_for_attn)
        layer_plan["attention.wv"] = ColwiseParallel(use_local_output=local_output_for_attn)
        layer_plan["attention.wo"] = (
            RowwiseParallel(output_layouts=Shard(1)) if use_seq_parallel else RowwiseParallel()
        )
        layer_plan["feed_forward.w1"] = (
            ColwiseParallel(input_layouts=Shard(1)) if use_seq_parallel else ColwiseParallel()
        )
        layer_plan["feed_forward.w2"] = (
            RowwiseParallel(output_layouts=Shard(1)) if use_seq_parallel else RowwiseParallel()
        )
        parallelize_module(layer, tp_mesh, layer_plan)

    # With weight tying, output.weight is set back to tok_embeddings.weight below, so
    # it is sharded as the embedding is, at the cost of RowwiseParallel's all-reduce.
    output_plan = (
        ColwiseParallel(input_layouts=Shard(1), output_layouts=Replicate())
        if use_seq_parallel
        else ColwiseParallel(output_layouts=Replicate())
    )
    parallelize_module(module.output, tp_mesh, output_plan)

    if local_output_for_attn:
        for layer in _blocks(module):
            layer.attention.n_heads = module.model_args.n_heads // tp_mesh.size()

    # Share the parameter (and its gradient) again.
    if module.model_args.weight_tying:
        module.output.weight = module.tok_embeddings.weight

    return module


def _blocks(module: Transformer) -> list[TransformerBlock]:
    """``module.layers`` as a typed list."""
    return [cast(TransformerBlock, layer) for layer in module.layers]


def small_transformer_args(**overrides: Any) -> ModelArgs:
    """The ``transformer`` fixture's :class:`ModelArgs`: the defaults with ``dropout_p=0.0``.

    2 layers, ``vocab_size`` 8, ``max_seq_len`` 16, ``dim`` 16, 4 heads, causal
    attention, weight tying. ``overrides`` replace fields.
    """
    return dataclasses.replace(ModelArgs(dropout_p=0.0), **overrides)


def small_transformer(
    device: torch.device | str | None = None, args: ModelArgs | None = None
) -> Transformer:
    """``Transformer(small_transformer_args())`` built on ``device``: 6,848 parameters.

    Built under ``with torch.device(device)`` (the model takes no device
    argument), so on CPU it draws exactly what ``Transformer(args)`` would.
    ``args`` replaces :func:`small_transformer_args`.
    """
    args = small_transformer_args() if args is None else args
    if device is None:
        return Transformer(args)
    with torch.device(device):
        return Transformer(args)


def small_transformer_input(
    device: torch.device | str | None = None, args: ModelArgs | None = None
) -> torch.Tensor:
    """Token ids ``(2, 8)`` (int64, in ``[0, vocab_size)``) for :func:`small_transformer`.

    Drawn with ``torch.randint`` from the global generator. A sequence of 8
    splits evenly over tensor-parallel sizes 1, 2, 4 and 8 (sequence
    parallelism shards it).
    """
    vocab_size = (small_transformer_args() if args is None else args).vocab_size
    return torch.randint(
        0, vocab_size, (SMALL_TRANSFORMER_BATCH, SMALL_TRANSFORMER_SEQ_LEN), device=device
    )
