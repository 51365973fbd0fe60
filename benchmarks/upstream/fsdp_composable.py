"""Side A of ``bench_upstream.py``: the same eleven ``fully_shard`` tests on pytest-composable.

Each test has the class and test name of a test in PyTorch's
``test/distributed/_composable/fsdp/test_fully_shard_training.py``, and does what
that test does (models, sizes, seeds, subtests, optimizers and checks; side B,
``fsdp_torch_harness.py``, has the same tests on torch's ``FSDPTest``), as a plain
pytest test on 2 gloo ranks: ``composable_world`` with
``@pytest.mark.composable(world_size=2, devices=["cpu"])`` (a ``mesh=`` for the 2-D
test), models from ``pytest_composable.models`` (``MLP``, ``MLPStack``,
``Transformer``, ``ModelArgs``, ``TransformerBlock``: upstream's, tensor for tensor)
and the checks of ``pytest_composable.parity``: ``assert_training_parity`` for
upstream's train-and-compare-losses loops, ``assert_sharded_parity`` for its
``check_sharded_parity``. A subtest sweep (``run_subtests``) stays a loop inside one
test, so both sides count the same tests.

Where the two sides differ in form, not in what is checked:

* upstream's loops zero gradients with ``set_to_none`` alternating (``True`` at even
  steps); :class:`AlternatingAdam` does the same inside ``assert_training_parity``,
  whose steps zero both models' gradients, run both, compare the losses, then step
  both (upstream runs one model's whole step, then the other's: the same values);
* ``fully_shard`` gets ``mesh=world.mesh`` (the world's 1-D mesh, what
  ``fully_shard`` builds by default), and the 2-D test takes its ``pp x dp x tp``
  mesh from the marker, built once for the session, where upstream builds a new
  mesh in each of its 16 subtests;
* ``test_non_root_forward_backward`` waits 100 ms by spinning on the clock where
  upstream spins a calibrated loop (``device_sleep`` with ``get_cycles_per_ms``).

``bench_upstream.py`` copies this file into a scratch directory as ``test_fsdp.py``.
Threads: not set here; the ranks run with what the plugin gives them.
"""

from __future__ import annotations

import copy
import gc
import itertools
import os
import time
from collections.abc import Iterator

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._composable import checkpoint, replicate
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor, Shard

from pytest_composable import World
from pytest_composable.models import MLP, MLPStack, ModelArgs, Transformer, TransformerBlock
from pytest_composable.parity import assert_sharded_parity, assert_training_parity

pytestmark = [
    pytest.mark.composable(world_size=2, devices=["cpu"]),
    pytest.mark.skipif(
        not hasattr(torch.cpu.Stream, "record_event"),
        reason="FSDP2 trains on CPU from torch 2.7 (torch.cpu.Stream events)",
    ),
]


@pytest.fixture(autouse=True)
def _note_threads(composable_world: World) -> None:
    """Notes this rank's ``torch.get_num_threads()`` in the file named by
    ``BENCH_UPSTREAM_THREADS`` (beside this file) where the benchmark sets it."""
    out = os.environ.get("BENCH_UPSTREAM_THREADS")
    if out:
        with open(os.path.join(os.path.dirname(__file__), out), "a") as f:
            f.write(f"{torch.get_num_threads()}\n")


class AlternatingAdam(torch.optim.Adam):
    """Adam at ``lr`` 1e-2 whose ``zero_grad`` sets gradients to ``None`` on its 1st, 3rd,
    ... call and zeroes them in place on the others, as upstream's loops do
    (``zero_grad(set_to_none=(iter_idx % 2 == 0))``)."""

    def __init__(self, params: Iterator[nn.Parameter], foreach: bool | None = None) -> None:
        super().__init__(params, lr=1e-2, foreach=foreach)
        self.zeroings = 0

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none=self.zeroings % 2 == 0)
        self.zeroings += 1


def adam_w(params: Iterator[nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-2)


def largest_dim(param: nn.Parameter) -> Shard | None:
    return Shard(param.shape.index(max(param.shape)))


def spin(seconds: float) -> None:
    """Keep this thread busy for ``seconds``, as ``device_sleep`` does on CPU."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


class MultiForwardModule(nn.Module):
    """Runs ``inner`` twice in one forward, then ``outer``."""

    def __init__(self, device: torch.device | str) -> None:
        super().__init__()
        self.inner = nn.Linear(4, 4, device=device)
        self.outer = nn.Linear(4, 5, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = self.inner(x)
        second = self.inner(x)
        return self.outer(first + second)  # type: ignore[no-any-return]


class TestFullyShard1DTrainingCore:
    def test_train_parity_single_group_shard_dim0(self, composable_world: World) -> None:
        for shapes in ([(16, 15), (15, 8)], [(7, 15), (15, 3)], [(16, 17), (17, 8)]):
            _train_parity_single_group(composable_world, shapes, use_shard_placement_fn=False)

    def test_train_parity_single_group_shard_largest_dim(self, composable_world: World) -> None:
        _train_parity_single_group(
            composable_world, [(32, 16), (16, 8)], use_shard_placement_fn=True
        )

    def test_non_root_forward_backward(self, composable_world: World) -> None:
        world = composable_world
        torch.manual_seed(42)
        dim = 32
        model = nn.Sequential(*(MLP(dim, torch.device("cpu")) for _ in range(3)))
        ref_model = copy.deepcopy(model)
        ref_optim = torch.optim.Adam(ref_model.parameters(), lr=1e-2)
        for mlp in model:
            fully_shard(mlp, mesh=world.mesh)
        fully_shard(model, mesh=world.mesh)
        optim = torch.optim.Adam(model.parameters(), lr=1e-2, foreach=True)
        torch.manual_seed(42 + world.rank)
        inp = torch.randn((8, dim))

        def average_grads() -> None:
            for param in ref_model.parameters():
                if param.grad is not None:
                    dist.all_reduce(param.grad)
                    param.grad.detach().div_(world.world_size)

        ref_root_loss = ref_model(inp).sum()
        ref_root_loss.backward()
        average_grads()
        ref_optim.step()
        ref_optim.zero_grad()
        ref_nonroot_loss = ref_model[0](inp).sum()
        ref_nonroot_loss.backward()
        average_grads()
        ref_optim.step()

        root_loss = model(inp).sum()
        root_loss.backward()
        spin(0.1)
        optim.step()
        optim.zero_grad()
        nonroot_loss = model[0](inp).sum()
        nonroot_loss.backward()
        optim.step()

        torch.testing.assert_close(root_loss, ref_root_loss)
        torch.testing.assert_close(nonroot_loss, ref_nonroot_loss)
        torch.testing.assert_close(model(inp).sum(), ref_model(inp).sum())

    def test_multi_forward_module(self, composable_world: World) -> None:
        world = composable_world
        # As upstream: the subtest's reshard_after_forward is not passed to fully_shard.
        for _reshard_after_forward in (True, False, 2):
            torch.manual_seed(42)
            model = MultiForwardModule("cpu")
            ref_model = copy.deepcopy(model)
            replicate(ref_model)
            fully_shard(model.inner, mesh=world.mesh)
            fully_shard(model, mesh=world.mesh)
            torch.manual_seed(42 + world.rank)
            inp = torch.randn((32, 4))
            assert_training_parity(ref_model, model, inp, steps=10, optimizer=AlternatingAdam)

    def test_explicit_prefetching(self, composable_world: World) -> None:
        world = composable_world
        torch.manual_seed(42)
        model_args = ModelArgs(n_layers=8, dropout_p=0.0)
        model = Transformer(model_args)
        ref_model = replicate(copy.deepcopy(model))
        for layer in itertools.chain(model.layers, [model]):
            fully_shard(layer, mesh=world.mesh)
        ahead = 2
        layers: list[FSDPModule] = list(model.layers)  # type: ignore[arg-type]
        for i, layer in enumerate(layers[: len(layers) - ahead]):
            layer.set_modules_to_forward_prefetch(layers[i + 1 : i + 1 + ahead])
        for i, layer in enumerate(layers):
            if i >= ahead:
                layer.set_modules_to_backward_prefetch([layers[i - j] for j in (1, 2)])
        torch.manual_seed(42 + world.rank)
        inp = torch.randint(0, model_args.vocab_size, (2, 8))
        assert_training_parity(ref_model, model, inp, steps=10, optimizer=adam_w)


def _train_parity_single_group(
    world: World, lin_shapes: list[tuple[int, int]], use_shard_placement_fn: bool
) -> None:
    torch.manual_seed(42)
    (in_a, out_a), (in_b, out_b) = lin_shapes
    model = nn.Sequential(nn.Linear(in_a, out_a), nn.ReLU(), nn.Linear(in_b, out_b))
    ref_model = copy.deepcopy(model)
    replicate(ref_model)
    fully_shard(
        model,
        mesh=world.mesh,
        shard_placement_fn=largest_dim if use_shard_placement_fn else None,
    )
    torch.manual_seed(42 + world.rank + 1)
    inp = torch.randn((4, in_a))
    assert_training_parity(ref_model, model, (inp,), steps=10, optimizer=AlternatingAdam)


class TestFullyShard1DTrainingCompose:
    def test_double_forward_with_nested_fsdp_and_checkpoint(self, composable_world: World) -> None:
        world = composable_world
        for reshard_after_forward, checkpoint_impl in itertools.product(
            (True, False), ("composable", "utils")
        ):
            torch.manual_seed(42)
            vocab_size = 1024
            model_args = ModelArgs(
                n_layers=3,
                n_heads=4,
                vocab_size=vocab_size,
                max_seq_len=64,
                dropout_p=0,
                checkpoint_activations=checkpoint_impl == "utils",
            )
            model = Transformer(model_args)
            if checkpoint_impl == "composable":
                for module in model.modules():
                    if isinstance(module, TransformerBlock):
                        checkpoint(module)
            for block in model.layers:
                assert isinstance(block, TransformerBlock)
                kwargs = {"mesh": world.mesh, "reshard_after_forward": reshard_after_forward}
                fully_shard(block.attention, **kwargs)  # type: ignore[arg-type]
                fully_shard(block.feed_forward, **kwargs)  # type: ignore[arg-type]
                fully_shard(block, **kwargs)  # type: ignore[arg-type]
            fully_shard(model, mesh=world.mesh, reshard_after_forward=reshard_after_forward)
            torch.manual_seed(42 + world.rank)
            first = torch.randint(0, vocab_size, (2, 32))
            second = torch.randint(0, vocab_size, (2, 32))
            # Two forwards before one backward, as in DPO.
            (model(first).sum() - model(second).sum()).pow(2).backward()
            for name, param in model.named_parameters():
                if param.requires_grad:
                    assert param.grad is not None, name


class TestFullyShardShardPlacementFnMultiProcess:
    def test_train_parity_shard_placement_fn_shard_largest_dim(
        self, composable_world: World
    ) -> None:
        world = composable_world
        torch.manual_seed(42)
        model_args = ModelArgs(n_layers=3, dropout_p=0.0)
        model = Transformer(model_args)
        ref_model = copy.deepcopy(model)
        for layer in model.layers:
            fully_shard(layer, mesh=world.mesh, shard_placement_fn=largest_dim)
        fully_shard(model, mesh=world.mesh, shard_placement_fn=largest_dim)
        assert_sharded_parity(ref_model, model)
        torch.manual_seed(42 + world.rank)
        inp = torch.randint(0, model_args.vocab_size, (2, 16))

        def average_reference_grads(step: int, reference: nn.Module, sharded: nn.Module) -> None:
            for param in reference.parameters():
                if param.grad is not None:
                    dist.all_reduce(param.grad, op=dist.ReduceOp.AVG)

        assert_training_parity(
            ref_model,
            model,
            inp,
            steps=5,
            optimizer=adam_w,
            step_hook=average_reference_grads,
        )
        assert_sharded_parity(ref_model, model)


class TestFullyShardSharedParams:
    def test_train_parity_with_shared_params(self, composable_world: World) -> None:
        world = composable_world
        for reshard_after_forward, use_activation_checkpointing in itertools.product(
            (False, True), (False, True)
        ):
            torch.manual_seed(42)
            model_args = ModelArgs(n_layers=3, dropout_p=0.0, weight_tying=True)
            model = Transformer(model_args)
            ref_model = copy.deepcopy(model)
            replicate(ref_model)
            for module in model.modules():
                if isinstance(module, TransformerBlock):
                    if use_activation_checkpointing:
                        checkpoint(module)
                    fully_shard(
                        module, mesh=world.mesh, reshard_after_forward=reshard_after_forward
                    )
            fully_shard(model, mesh=world.mesh, reshard_after_forward=reshard_after_forward)
            torch.manual_seed(42 + world.rank + 1)
            vocab_size = model_args.vocab_size
            assert_training_parity(
                ref_model,
                model,
                lambda step, vocab_size=vocab_size: torch.randint(0, vocab_size, (2, 16)),
                steps=10,
                optimizer=AlternatingAdam,
            )

    def test_layer_by_layer_shard_no_false_positive(self, composable_world: World) -> None:
        world = composable_world
        dim = 16

        class Block(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.norm = nn.LayerNorm(dim)
                self.linear = nn.Linear(dim, dim, bias=False)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.linear(self.norm(x))  # type: ignore[no-any-return]

        class Blocks(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.blocks = nn.ModuleList()

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                for block in self.blocks:
                    x = block(x)
                return x

        model = Blocks()
        for _ in range(8):
            block = Block()
            model.blocks.append(block)
            fully_shard(block, mesh=world.mesh)
            gc.collect()  # lets a freed parameter's id() be reused, as upstream provokes
        fully_shard(model, mesh=world.mesh)
        model(torch.randn(2, 4, dim)).sum().backward()


class TestFullyShardGradientAccumulation:
    def test_1f1b_microbatching(self, composable_world: World) -> None:
        world = composable_world
        for use_explicit_unshard, reshard_after_backward in itertools.product(
            (False, True), (False, True)
        ):
            torch.manual_seed(42)
            model_args = ModelArgs(dropout_p=0.0)
            model = Transformer(model_args)
            ref_model = copy.deepcopy(model)
            ref_optim = torch.optim.AdamW(ref_model.parameters(), lr=1e-2)
            for module in model.modules():
                if isinstance(module, TransformerBlock):
                    fully_shard(module, mesh=world.mesh, reshard_after_forward=False)
            fully_shard(model, mesh=world.mesh, reshard_after_forward=False)
            optim = torch.optim.AdamW(model.parameters(), lr=1e-2)
            microbatches = 3
            torch.manual_seed(42 + world.rank + 1)
            inps = [torch.randint(0, model_args.vocab_size, (2, 16)) for _ in range(microbatches)]
            if use_explicit_unshard:
                for module in model.modules():
                    if isinstance(module, FSDPModule):
                        module.unshard(async_op=True)
            losses, ref_losses = [], []
            for index, inp in enumerate(inps):
                last = index == microbatches - 1
                model.set_requires_gradient_sync(last)  # type: ignore[operator]
                model.set_is_last_backward(last)  # type: ignore[operator]
                if not reshard_after_backward:
                    model.set_reshard_after_backward(last)  # type: ignore[operator]
                losses.append(model(inp).sum())
                losses[-1].backward()
                ref_losses.append(ref_model(inp).sum())
                ref_losses[-1].backward()
            for param in ref_model.parameters():
                assert param.grad is not None
                dist.all_reduce(param.grad, op=dist.ReduceOp.AVG)
            for loss, ref_loss in zip(losses, ref_losses, strict=True):
                torch.testing.assert_close(loss, ref_loss)
            optim.step()
            ref_optim.step()
            assert_sharded_parity(ref_model, model)


class TestFullyShardNDTraining:
    # Upstream's mesh for 2 ranks: pp = dp = 1, tp = 2.
    @pytest.mark.composable(mesh={"pp": 1, "dp": 1, "tp": 2})
    def test_2d_mlp_with_nd_mesh(self, composable_world: World) -> None:
        world = composable_world
        dp_mesh, tp_mesh = world.mesh["dp"], world.mesh["tp"]
        dp_pg = dp_mesh.get_group()
        for reshard_after_forward, use_activation_checkpointing, mlp_dim in itertools.product(
            (False, True), (False, True), (3, 5, 16, 17)
        ):
            torch.manual_seed(42)
            model = MLPStack(mlp_dim)
            ref_model = copy.deepcopy(model)
            replicate(ref_model, process_group=dp_pg)
            model.parallelize(
                tp_mesh,
                dp_mesh,
                use_activation_checkpointing,
                reshard_after_forward=reshard_after_forward,
            )
            torch.manual_seed(42 + dp_pg.rank() + 1)
            assert_training_parity(
                ref_model,
                model,
                lambda step, dim=mlp_dim: torch.randn((8, dim)),
                steps=10,
                optimizer=lambda params: AlternatingAdam(params, foreach=False),
            )
            for name, param in model.named_parameters():
                assert isinstance(param, DTensor), name
                assert param.device_mesh.ndim == 2, name
                assert len(param.placements) == 2, name
                assert param.device_mesh.mesh_dim_names == ("dp", "tp"), name
