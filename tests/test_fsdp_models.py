"""The FSDP2 and tensor-parallel models against torch's own.

``MLP`` and ``MLPStack`` against ``torch.testing._internal.common_fsdp``; ``ModelArgs``,
``Attention``, ``FeedForward``, ``TransformerBlock`` and ``Transformer`` against
``torch.testing._internal.distributed._tensor.common_dtensor``. Torch's modules are
imported lazily (they import ``common_utils``, which changes global torch state), and a
test skips, with the reason, where the installed torch lacks one of them.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from torch import nn

import pytest_composable
from pytest_composable import World, models
from pytest_composable._mlp import (
    SMALL_MLP_DIM,
    small_mlp,
    small_mlp_input,
    small_mlp_stack,
)
from pytest_composable._transformer import (
    SMALL_TRANSFORMER_SEQ_LEN,
    small_transformer,
    small_transformer_args,
    small_transformer_input,
)

FSDP_MODULE = "torch.testing._internal.common_fsdp"
DTENSOR_MODULE = "torch.testing._internal.distributed._tensor.common_dtensor"
UPSTREAM_OF = {
    "MLP": FSDP_MODULE,
    "MLPStack": FSDP_MODULE,
    "ModelArgs": DTENSOR_MODULE,
    "Attention": DTENSOR_MODULE,
    "FeedForward": DTENSOR_MODULE,
    "TransformerBlock": DTENSOR_MODULE,
    "Transformer": DTENSOR_MODULE,
}
# FSDP2 orders its collectives with stream events, on CPU those of torch.cpu.Stream,
# which has none on torch 2.6: there fully_shard shards on CPU, but cannot run a forward.
FSDP2_TRAINS_ON_CPU = all(hasattr(torch.cpu.Stream, m) for m in ("record_event", "wait_event"))


def upstream(name: str) -> Any:
    """Torch's class ``name``; skips where the installed torch lacks it."""
    module: ModuleType = pytest.importorskip(
        UPSTREAM_OF[name], reason=f"torch {torch.__version__} has no {UPSTREAM_OF[name]}"
    )
    if not hasattr(module, name):
        pytest.skip(f"torch {torch.__version__}'s {module.__name__} has no {name}")
    return getattr(module, name)


def upstream_args(args: models.ModelArgs) -> Any:
    """Torch's ``ModelArgs`` with ``args``' values (those of the fields it has)."""
    cls = upstream("ModelArgs")
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in dataclasses.asdict(args).items() if k in names})


# ---------------------------------------------------------------------------------
# Builders: (ours, torch's) for one configuration, each after torch.manual_seed(seed).

Build = Callable[[Any], nn.Module]


def _called(name: str, *args: Any, **kwargs: Any) -> tuple[str, Build]:
    """Class ``name`` called with these arguments."""
    return name, lambda cls: cls(*args, **kwargs)


def _with_args(name: str, **fields: Any) -> tuple[str, Build]:
    """Class ``name`` called with a ``ModelArgs`` of these fields (torch's, for torch's)."""

    def build(cls: Any) -> nn.Module:
        args = models.ModelArgs(**fields)
        if cls is getattr(models, name):
            return cls(args)  # type: ignore[no-any-return]
        return cls(upstream_args(args))  # type: ignore[no-any-return]

    return name, build


CONFIGS: dict[str, tuple[str, Build]] = {
    "mlp": _called("MLP", 16),
    "mlp-device": _called("MLP", 8, torch.device("cpu")),
    "mlp-no-bias": _called("MLP", 16, bias=False),
    "mlp-buffer": _called("MLP", 16, with_buffer=True),
    "mlp-x3-buffer-no-bias": _called("MLP", 12, dim_multiplier=3, with_buffer=True, bias=False),
    "stack": _called("MLPStack", 16),
    "stack-seq-parallel": _called("MLPStack", 8, with_seq_parallel=True),
    "transformer": _with_args("Transformer"),
    "transformer-untied": _with_args("Transformer", weight_tying=False),
    "transformer-wide": _with_args(
        "Transformer", n_layers=3, dim=32, n_heads=8, vocab_size=11, use_attn_mask=False
    ),
    "transformer-checkpointed": _with_args(
        "Transformer", checkpoint_activations=True, dropout_p=0.0
    ),
    "block": _with_args("TransformerBlock"),
    "attention": _with_args("Attention", dim=24, n_heads=3),
    "feed-forward": _called("FeedForward", 16, 40, 0.1),
}


def build_pair(config: str, seed: int) -> tuple[nn.Module, nn.Module]:
    """Ours and torch's model of ``config``, each built after ``torch.manual_seed(seed)``.

    Also checks that both leave the global generator in the same state: they draw the
    same numbers, in the same order.
    """
    name, build = CONFIGS[config]
    theirs_cls = upstream(name)
    torch.manual_seed(seed)
    ours = build(getattr(models, name))
    ours_rng = torch.get_rng_state()
    torch.manual_seed(seed)
    theirs = build(theirs_cls)
    assert torch.equal(ours_rng, torch.get_rng_state())
    return ours, theirs


def plain_attributes(module: nn.Module) -> dict[str, Any]:
    """The public attributes a module sets on itself that are no parameter, buffer or module."""
    found: dict[str, Any] = {}
    for key, value in vars(module).items():
        if key.startswith("_") or key == "training":
            continue
        found[key] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return found


# What ours has that torch 2.13's has and torch 2.6's lacks, with the (dense) values
# ours always holds: TransformerBlock.has_experts and ModelArgs.num_experts.
NEWER = {"has_experts": False, "num_experts": 0}


def without_newer(mine: Any, other: Any) -> Any:
    """``mine`` without the :data:`NEWER` keys that ``other`` lacks, at every depth.

    Such a key must hold its :data:`NEWER` value; ``mine == other`` is then the test.
    """
    if not (isinstance(mine, dict) and isinstance(other, dict)):
        return mine
    kept: dict[Any, Any] = {}
    for key, value in mine.items():
        if key in other:
            kept[key] = without_newer(value, other[key])
        else:
            assert key in NEWER, f"{key!r} is ours only"
            assert value == NEWER[key], key
    return kept


def test_models_are_exported() -> None:
    for name in UPSTREAM_OF:
        assert name in models.__all__
        cls = getattr(models, name)
        assert cls.__module__ in ("pytest_composable._mlp", "pytest_composable._transformer")
        assert "torch" in (cls.__doc__ or "")


def test_models_do_not_import_torch_testing() -> None:
    """Users' torch may lack ``torch.testing._internal``: the models never import it."""
    package = Path(pytest_composable.__file__).parent
    for source in ("_mlp.py", "_transformer.py", "models.py"):
        tree = ast.parse((package / source).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not any(n.startswith("torch.testing") for n in names), (source, names)


# ---------------------------------------------------------------------------------
# Signatures


@pytest.mark.parametrize(
    ("name", "method"),
    [
        ("MLP", "__init__"),
        ("MLPStack", "__init__"),
        ("MLPStack", "parallelize"),
        ("Attention", "__init__"),
        ("FeedForward", "__init__"),
        ("TransformerBlock", "__init__"),
        ("Transformer", "__init__"),
        ("Transformer", "forward"),
        ("MLP", "forward"),
        ("MLP", "reset_parameters"),
    ],
)
def test_signature_matches_upstream(name: str, method: str) -> None:
    ours = inspect.signature(getattr(getattr(models, name), method))
    theirs = inspect.signature(getattr(upstream(name), method))
    assert [(p.name, p.kind, p.default) for p in ours.parameters.values()] == [
        (p.name, p.kind, p.default) for p in theirs.parameters.values()
    ]


def test_transformer_parallelize_signature() -> None:
    """torch 2.13's; torch 2.6's takes the same positions, but names the mesh ``device_mesh``."""
    ours = inspect.signature(models.Transformer.parallelize)
    theirs = inspect.signature(upstream("Transformer").parallelize)
    assert isinstance(inspect.getattr_static(models.Transformer, "parallelize"), staticmethod)
    mine = [(p.name, p.kind, p.default) for p in ours.parameters.values()]
    assert [n for n, _, _ in mine] == [
        "module",
        "tp_mesh",
        "use_seq_parallel",
        "local_output_for_attn",
        "ep_mesh",
    ]
    if "ep_mesh" in theirs.parameters:
        assert mine == [(p.name, p.kind, p.default) for p in theirs.parameters.values()]
    else:  # torch 2.6
        renamed = {"device_mesh": "tp_mesh"}
        expected = [
            (renamed.get(p.name, p.name), p.kind, p.default) for p in theirs.parameters.values()
        ]
        assert mine[: len(expected)] == expected


def test_model_args_fields_are_a_superset_of_upstreams() -> None:
    ours = [(f.name, f.default) for f in dataclasses.fields(models.ModelArgs)]
    theirs = [(f.name, f.default) for f in dataclasses.fields(upstream("ModelArgs"))]
    assert ours[: len(theirs)] == theirs
    # torch 2.13's fields; torch 2.6 lacks num_experts.
    assert [n for n, _ in ours] == [
        "n_layers",
        "vocab_size",
        "max_seq_len",
        "dim",
        "n_heads",
        "dropout_p",
        "use_attn_mask",
        "weight_tying",
        "checkpoint_activations",
        "num_experts",
    ]
    assert models.ModelArgs() == models.ModelArgs(dropout_p=0.1, num_experts=0)


# ---------------------------------------------------------------------------------
# Structure, tensors and outputs on CPU


@pytest.mark.parametrize("seed", [0, 5])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_same_structure_and_tensors(config: str, seed: int) -> None:
    ours, theirs = build_pair(config, seed)
    assert type(ours).__name__ == type(theirs).__name__
    assert [(n, type(m).__name__) for n, m in ours.named_modules()] == [
        (n, type(m).__name__) for n, m in theirs.named_modules()
    ]
    ours_params, theirs_params = list(ours.named_parameters()), list(theirs.named_parameters())
    assert [(n, p.shape) for n, p in ours_params] == [(n, p.shape) for n, p in theirs_params]
    for (name, mine), (_, other) in zip(ours_params, theirs_params, strict=True):
        assert torch.equal(mine, other), name
    ours_buffers, theirs_buffers = list(ours.named_buffers()), list(theirs.named_buffers())
    assert [(n, b.shape) for n, b in ours_buffers] == [(n, b.shape) for n, b in theirs_buffers]
    for (name, mine), (_, other) in zip(ours_buffers, theirs_buffers, strict=True):
        assert torch.equal(mine, other), name
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for (name, mine_m), (_, other_m) in zip(
        ours.named_modules(), theirs.named_modules(), strict=True
    ):
        mine_attrs, other_attrs = plain_attributes(mine_m), plain_attributes(other_m)
        assert without_newer(mine_attrs, other_attrs) == other_attrs, name


@pytest.mark.parametrize("config", ["transformer", "transformer-untied"])
def test_weight_tying_is_upstreams(config: str) -> None:
    ours, theirs = build_pair(config, 0)
    tied = ours.output.weight is ours.tok_embeddings.weight
    assert tied == (theirs.output.weight is theirs.tok_embeddings.weight)
    assert tied == (config == "transformer")


def _input_for(config: str, model: nn.Module) -> torch.Tensor:
    """A ``(3, 5, features)`` input, or ``(3, 8)`` token ids for a transformer."""
    name = CONFIGS[config][0]
    if name == "Transformer":
        return torch.randint(0, model.tok_embeddings.num_embeddings, (3, 8))
    first = next(m for m in model.modules() if isinstance(m, nn.Linear))
    return torch.randn(3, 5, first.in_features)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_same_forward_and_gradients(config: str, training: bool) -> None:
    ours, theirs = build_pair(config, 1)
    ours.train(training)
    theirs.train(training)
    x = _input_for(config, ours)
    torch.manual_seed(2)  # dropout draws the same masks
    ours_out = ours(x)
    torch.manual_seed(2)
    theirs_out = theirs(x)
    assert ours_out.dtype == theirs_out.dtype
    assert torch.equal(ours_out, theirs_out)
    ours_out.sum().backward()
    theirs_out.sum().backward()
    for (name, mine), (_, other) in zip(
        ours.named_parameters(), theirs.named_parameters(), strict=True
    ):
        assert (mine.grad is None) == (other.grad is None), name
        if mine.grad is not None:
            assert torch.equal(mine.grad, other.grad), name


@pytest.mark.parametrize("config", ["mlp-buffer", "mlp-x3-buffer-no-bias"])
def test_mlp_reset_parameters_redraws_the_buffer_as_upstream(config: str) -> None:
    ours, theirs = build_pair(config, 0)
    torch.manual_seed(9)
    ours.reset_parameters()
    torch.manual_seed(9)
    theirs.reset_parameters()
    assert torch.equal(ours.buffer, theirs.buffer)
    assert not torch.equal(ours.buffer, build_pair(config, 0)[0].buffer)


def test_mlp_without_buffer_has_none() -> None:
    mlp = models.MLP(4)
    assert mlp.buffer is None
    assert "buffer" not in dict(mlp.named_buffers())
    mlp.reset_parameters()  # nothing to redraw


def test_model_builds_on_meta() -> None:
    assert models.MLP(8, torch.device("meta"), with_buffer=True).buffer.device.type == "meta"
    with torch.device("meta"):
        transformer = models.Transformer(models.ModelArgs())
    assert transformer.output.weight.device.type == "meta"


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: models.Transformer(models.ModelArgs(num_experts=2)), "num_experts=2"),
        (lambda: models.TransformerBlock(models.ModelArgs(num_experts=1)), "mixture-of-experts"),
        (lambda: models.Attention(models.ModelArgs(dim=10, n_heads=4)), "divisible by n_heads"),
        (lambda: models.Transformer(models.ModelArgs(vocab_size=None)), "vocab_size"),  # type: ignore[arg-type]
        (lambda: models.Transformer(models.ModelArgs(max_seq_len=None)), "max_seq_len"),  # type: ignore[arg-type]
    ],
    ids=["experts", "block-experts", "heads", "no-vocab", "no-max-seq-len"],
)
def test_bad_arguments_raise_value_error(build: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()


def test_a_too_long_sequence_raises() -> None:
    model = models.Transformer(models.ModelArgs(max_seq_len=4))
    with pytest.raises(ValueError, match=r"exceeds ModelArgs\.max_seq_len"):
        model(torch.zeros(1, 5, dtype=torch.long))


# ---------------------------------------------------------------------------------
# The small fixture sizes


def test_small_mlp() -> None:
    torch.manual_seed(0)
    mlp = small_mlp("cpu")
    torch.manual_seed(0)
    assert torch.equal(mlp.in_proj.weight, models.MLP(16).in_proj.weight)
    assert sum(p.numel() for p in mlp.parameters()) == 2128
    assert mlp.buffer is None
    x = small_mlp_input("cpu")
    assert (x.shape, x.dtype) == ((2, SMALL_MLP_DIM), torch.float32)
    assert mlp(x).shape == (2, 16)
    assert small_mlp("meta").in_proj.weight.device.type == "meta"
    assert small_mlp().in_proj.weight.device.type == "cpu"


def test_small_mlp_stack() -> None:
    stack = small_mlp_stack()
    assert sum(p.numel() for p in stack.parameters()) == 5328
    assert len(stack) == 3
    seq = small_mlp_stack(with_seq_parallel=True)
    assert sum(p.numel() for p in seq.parameters()) == 5344
    assert isinstance(seq[3], nn.LayerNorm)
    x = small_mlp_input(seq_len=4)
    assert x.shape == (2, 4, 16)
    assert seq(x).shape == (2, 4, 16)
    assert small_mlp_stack("meta")[2].out_proj.weight.device.type == "meta"
    torch.manual_seed(0)
    on_cpu = small_mlp_stack("cpu")
    torch.manual_seed(0)
    assert torch.equal(on_cpu[1].in_proj.weight, models.MLPStack(16)[1].in_proj.weight)


def test_small_transformer() -> None:
    args = small_transformer_args()
    assert args == models.ModelArgs(dropout_p=0.0)
    assert small_transformer_args(n_layers=1).n_layers == 1
    torch.manual_seed(0)
    model = small_transformer("cpu")
    torch.manual_seed(0)
    reference = models.Transformer(models.ModelArgs(dropout_p=0.0))
    for (name, mine), (_, other) in zip(
        model.state_dict().items(), reference.state_dict().items(), strict=True
    ):
        assert torch.equal(mine, other), name
    assert sum(p.numel() for p in model.parameters()) == 6848
    tokens = small_transformer_input("cpu")
    assert (tokens.shape, tokens.dtype) == ((2, SMALL_TRANSFORMER_SEQ_LEN), torch.int64)
    assert int(tokens.min()) >= 0
    assert int(tokens.max()) < args.vocab_size
    model.train()
    assert torch.equal(model(tokens), model(tokens))  # no dropout in training mode
    assert model(tokens).shape == (2, 8, 8)
    assert small_transformer("meta").norm.weight.device.type == "meta"
    wide = models.ModelArgs(vocab_size=3)
    assert int(small_transformer_input(args=wide).max()) < 3


# ---------------------------------------------------------------------------------
# parallelize: the same placements, module types and hooks as torch's, in a fake world


def _captured(value: object) -> object:
    """What a hook captured, comparable across models: a parallel style's settings."""
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.tensor.parallel import ParallelStyle

    if isinstance(value, functools.partial):
        # ColwiseParallel and friends: partial(_prepare_input_fn, layouts..., use_local_output)
        return (value.func.__qualname__, value.args, value.keywords)
    if isinstance(value, DeviceMesh):
        return ("DeviceMesh", value.mesh_dim_names, value.size())
    if isinstance(value, ParallelStyle):  # PrepareModuleInput keeps itself
        return (type(value).__name__, vars(value))
    return type(value).__name__


def _hooks(module: nn.Module) -> dict[str, list[object]]:
    """Each forward (pre-)hook's name and what its closure holds, in order."""

    def describe(hook: object) -> object:
        cells = getattr(hook, "__closure__", None) or ()
        return (
            getattr(hook, "__qualname__", type(hook).__qualname__),
            [_captured(cell.cell_contents) for cell in cells],
        )

    return {
        "pre": [describe(h) for h in module._forward_pre_hooks.values()],
        "post": [describe(h) for h in module._forward_hooks.values()],
    }


def _layout(model: nn.Module) -> dict[str, Any]:
    """What ``parallelize`` did: per module its type and hooks, per parameter its DTensor layout."""
    modules = {
        name: {
            "types": [c.__name__ for c in type(m).__mro__[:2]],
            "hooks": _hooks(m),
            "attributes": plain_attributes(m),
        }
        for name, m in model.named_modules()
    }
    params: dict[str, Any] = {}
    for name, p in model.named_parameters():
        if hasattr(p, "placements"):
            params[name] = (
                tuple(p.placements),
                p.device_mesh.mesh_dim_names,
                tuple(p.shape),
                tuple(p.to_local().shape),
            )
        else:
            params[name] = (type(p).__name__, tuple(p.shape))
    return {"modules": modules, "params": params}


def assert_same_layout(ours: nn.Module, theirs: nn.Module) -> dict[str, Any]:
    """Ours and torch's parallelized alike; returns ours' :func:`_layout`."""
    mine, other = _layout(ours), _layout(theirs)
    assert without_newer(mine, other) == other
    return mine


DP_TP = pytest.mark.composable(mesh={"dp": 2, "tp": 2}, devices=["cpu"])


@DP_TP
@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "ac"])
@pytest.mark.parametrize("seq_parallel", [False, True], ids=["tp", "sp"])
def test_mlp_stack_parallelize_is_upstreams(
    composable_fake_world: World, seq_parallel: bool, checkpointing: bool
) -> None:
    from torch.distributed.tensor import Shard

    mesh = composable_fake_world.mesh
    ours, theirs = build_pair("stack-seq-parallel" if seq_parallel else "stack", 0)
    kwargs = {"reshard_after_forward": False}
    assert ours.parallelize(mesh["tp"], mesh["dp"], checkpointing, **kwargs) is ours
    theirs.parallelize(mesh["tp"], mesh["dp"], checkpointing, **kwargs)
    layout = assert_same_layout(ours, theirs)
    assert layout["modules"][""]["types"] == ["FSDPMLPStack", "FSDPModule"]
    assert layout["params"]["0.out_proj.weight"][:2] == ((Shard(0), Shard(1)), ("dp", "tp"))


@DP_TP
@pytest.mark.parametrize("tying", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("local_attn", [False, True], ids=["dtensor-attn", "local-attn"])
@pytest.mark.parametrize("seq_parallel", [False, True], ids=["tp", "sp"])
def test_transformer_parallelize_is_upstreams(
    composable_fake_world: World, seq_parallel: bool, local_attn: bool, tying: bool
) -> None:
    tp = composable_fake_world.mesh["tp"]
    ours, theirs = build_pair("transformer" if tying else "transformer-untied", 0)
    result = models.Transformer.parallelize(ours, tp, seq_parallel, local_attn)
    assert result is ours
    upstream("Transformer").parallelize(theirs, tp, seq_parallel, local_attn)
    assert_same_layout(ours, theirs)
    assert (ours.output.weight is ours.tok_embeddings.weight) == tying
    heads = {layer.attention.n_heads for layer in ours.layers}
    assert heads == {2 if local_attn else 4}


@DP_TP
@pytest.mark.parametrize("seq_parallel", [False, True], ids=["tp", "sp"])
def test_tensor_parallel_attention_on_cpu_needs_local_output(
    composable_fake_world: World, seq_parallel: bool
) -> None:
    """What ``Transformer.parallelize``'s docstring says of CPU, for ours and torch's alike."""
    tp = composable_fake_world.mesh["tp"]
    tokens = small_transformer_input()
    args = small_transformer_args()
    builders = {
        "ours": lambda: models.Transformer(args),
        "torch's": lambda: upstream("Transformer")(upstream_args(args)),
    }
    for whose, build in builders.items():
        model = build()
        type(model).parallelize(model, tp, seq_parallel, False)
        # If a torch release adds the rule, update Transformer.parallelize's docstring.
        with pytest.raises(NotImplementedError, match="_scaled_dot_product_flash_attention"):
            model(tokens)
        model = build()
        type(model).parallelize(model, tp, seq_parallel, True)
        assert model(tokens).shape == (2, SMALL_TRANSFORMER_SEQ_LEN, 8), whose


@DP_TP
def test_transformer_parallelize_rejects_what_it_does_not_support(
    composable_fake_world: World,
) -> None:
    mesh = composable_fake_world.mesh
    model = small_transformer()
    with pytest.raises(ValueError, match="ep_mesh"):
        models.Transformer.parallelize(model, mesh["tp"], False, ep_mesh=mesh["dp"])
    with pytest.raises(ValueError, match="needs a tp_mesh"):
        models.Transformer.parallelize(model, None, False)
    with pytest.raises(TypeError, match="requires a Transformer"):
        models.Transformer.parallelize(small_mlp(), mesh["tp"], False)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------
# Real ranks: the parallelized models compute what the plain ones do


@pytest.mark.composable(world_size=2, devices=["cpu"])
@pytest.mark.parametrize("seq_parallel", [False, True], ids=["tp", "sp"])
def test_tensor_parallel_transformer_matches_the_plain_one(
    composable_world: World, seq_parallel: bool
) -> None:
    torch.manual_seed(0)
    model = small_transformer()
    reference = copy.deepcopy(model)
    tokens = small_transformer_input()
    models.Transformer.parallelize(model, composable_world.mesh, seq_parallel, True)
    out = model(tokens)
    expected = reference(tokens)
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    expected.sum().backward()
    grad = model.layers[0].feed_forward.w1.weight.grad
    torch.testing.assert_close(grad.full_tensor(), reference.layers[0].feed_forward.w1.weight.grad)


@pytest.mark.skipif(
    not FSDP2_TRAINS_ON_CPU,
    reason="torch.cpu.Stream has no record_event/wait_event: FSDP2 cannot train on CPU",
)
@pytest.mark.composable(mesh={"dp": 1, "tp": 2}, devices=["cpu"])
@pytest.mark.parametrize("seq_parallel", [False, True], ids=["tp", "sp"])
def test_parallel_mlp_stack_matches_the_plain_one(
    composable_world: World, seq_parallel: bool
) -> None:
    torch.manual_seed(0)
    stack = small_mlp_stack(with_seq_parallel=seq_parallel)
    reference = copy.deepcopy(stack)
    x = small_mlp_input(seq_len=4)
    stack.parallelize(composable_world.mesh["tp"], composable_world.mesh["dp"], True)
    out = stack(x)
    if hasattr(out, "full_tensor"):
        out = out.full_tensor()
    torch.testing.assert_close(out, reference(x))
