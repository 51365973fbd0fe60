"""Side B of ``bench_upstream.py``: eleven of PyTorch's ``fully_shard`` tests on torch's harness.

Each test class and test name is that of a test in PyTorch's
``test/distributed/_composable/fsdp/test_fully_shard_training.py`` marked
``skip_if_lt_x_gpu(N, allow_cpu=True)`` (it runs on CPU), written again for this benchmark on
the harness torch installs (``torch.testing._internal.common_fsdp.FSDPTest``,
``MLP``, ``MLPStack``, ``check_sharded_parity``, and the toy ``Transformer`` of
``common_dtensor``): the same models, sizes, seeds, subtests, optimizers and
checks as upstream's test. ``bench_upstream.py`` copies this file into a scratch
directory as ``test_fsdp.py`` and runs it with ``python -m pytest``, the way
PyTorch's users run these files (``pytest test/distributed/...``); the copy of the
same tests on pytest-composable's fixtures is ``fsdp_composable.py``.

**What is patched, and why.** On torch 2.13, ``FSDPTest._run`` (the entry point of
each spawned rank) exits every rank with ``TEST_SKIPS["multi-gpu-N"]`` ("Need at
least N CUDA devices") when ``torch.accelerator.device_count() < world_size``,
also on a CPU-only machine where ``skip_if_lt_x_gpu(2, allow_cpu=True)`` lets the
test run: so every test is skipped. Two changes, both in :class:`CPUFSDPTest`
below, nothing else of torch's harness is touched:

1. ``_run`` is torch's own ``FSDPTestMixin._run`` (the same file, the same body:
   init the process group, barrier, ``set_rng_seed()``, run the test, barrier,
   destroy), whose device check reads ``DEVICE_TYPE != "cpu" and ...``, so CPU
   ranks pass it. ``FSDPTest`` overrides it with the copy that lacks that guard.
   The override here first notes ``torch.get_num_threads()`` in the file named by
   ``BENCH_UPSTREAM_THREADS`` (beside this file) when that is set, which is how the
   benchmark reports each rank's threads, then calls it.
2. ``world_size`` is 2 in every class: ``FSDPTest``'s default is the device count
   (1 on CPU), and upstream's classes ask for up to 8 ranks (``min(8, gpus)``, or
   8, 4 or 2 on CPU); both sides of the benchmark run 2 ranks.

Where upstream names a device it uses ``get_devtype()`` (``cpu`` here), and
``device_ids`` is ``None`` on CPU, as upstream's ``_get_device_ids`` gives. Threads:
not set, so each spawned rank runs with torch's default (``torch.get_num_threads()``,
the machine's cores), as upstream's users run it.
"""

# ruff: noqa: PT009
# (unittest assertions: these are torch TestCase tests, written as upstream writes them)

from __future__ import annotations

import copy
import functools
import itertools
import os

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed._composable import checkpoint, replicate
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor, Shard
from torch.testing._internal.common_distributed import skip_if_lt_x_gpu
from torch.testing._internal.common_fsdp import (
    MLP,
    FSDPTest,
    FSDPTestMixin,
    MLPStack,
    check_sharded_parity,
    get_devtype,
)
from torch.testing._internal.common_utils import device_sleep, get_cycles_per_ms
from torch.testing._internal.distributed._tensor.common_dtensor import (
    ModelArgs,
    Transformer,
    TransformerBlock,
)

device_type = torch.device(get_devtype())
WORLD_SIZE = 2
_TORCH_CPU_AWARE_RUN = FSDPTestMixin.__dict__["_run"]  # a classmethod object


def _device_ids(rank: int) -> list[int] | None:
    return None if device_type.type == "cpu" else [rank]


class CPUFSDPTest(FSDPTest):
    """``FSDPTest`` with the two CPU changes of the module docstring."""

    @classmethod
    def _run(cls, rank, test_name, file_name, pipe, **kwargs):  # type: ignore[override]
        out = os.environ.get("BENCH_UPSTREAM_THREADS")
        if out:
            with open(os.path.join(os.path.dirname(__file__), out), "a") as f:
                f.write(f"{torch.get_num_threads()}\n")
        _TORCH_CPU_AWARE_RUN.__func__(cls, rank, test_name, file_name, pipe, **kwargs)

    @property
    def world_size(self) -> int:
        return WORLD_SIZE


def _largest_dim(param: nn.Parameter) -> Shard | None:
    return Shard(param.shape.index(max(param.shape)))


# --- test_fully_shard_training.py -----------------------------------------------------


class MultiForwardModule(nn.Module):
    """Runs ``inner`` twice in one forward, then ``outer``."""

    def __init__(self, device: torch.device | str) -> None:
        super().__init__()
        self.inner = nn.Linear(4, 4, device=device)
        self.outer = nn.Linear(4, 5, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = self.inner(x)
        second = self.inner(x)
        return self.outer(first + second)


class TestFullyShard1DTrainingCore(CPUFSDPTest):
    @skip_if_lt_x_gpu(2, allow_cpu=True)
    def test_train_parity_single_group_shard_dim0(self):
        self.run_subtests(
            {
                "lin_shapes": [
                    [(16, 15), (15, 8)],
                    [(7, 15), (15, 3)],
                    [(16, 17), (17, 8)],
                ],
                "use_shard_placement_fn": [False],
            },
            self._train_parity_single_group,
        )

    @skip_if_lt_x_gpu(2, allow_cpu=True)
    def test_train_parity_single_group_shard_largest_dim(self):
        self.run_subtests(
            {"lin_shapes": [[(32, 16), (16, 8)]], "use_shard_placement_fn": [True]},
            self._train_parity_single_group,
        )

    def _train_parity_single_group(self, lin_shapes, use_shard_placement_fn):
        torch.manual_seed(42)
        (in_a, out_a), (in_b, out_b) = lin_shapes
        model = nn.Sequential(nn.Linear(in_a, out_a), nn.ReLU(), nn.Linear(in_b, out_b))
        ref_model = copy.deepcopy(model).to(device_type)
        replicate(ref_model, device_ids=_device_ids(self.rank))
        ref_optim = torch.optim.Adam(ref_model.parameters(), lr=1e-2)
        fully_shard(model, shard_placement_fn=_largest_dim if use_shard_placement_fn else None)
        optim = torch.optim.Adam(model.parameters(), lr=1e-2)
        torch.manual_seed(42 + self.rank + 1)
        inp = torch.randn((4, in_a), device=device_type)
        for step in range(10):
            losses = []
            for one_model, one_optim in ((ref_model, ref_optim), (model, optim)):
                one_optim.zero_grad(set_to_none=step % 2 == 0)
                losses.append(one_model(inp).sum())
                losses[-1].backward()
                one_optim.step()
            self.assertEqual(losses[0], losses[1])

    @skip_if_lt_x_gpu(2, allow_cpu=True)
    def test_non_root_forward_backward(self):
        torch.manual_seed(42)
        dim = 32
        model = nn.Sequential(*(MLP(dim, torch.device("cpu")) for _ in range(3)))
        ref_model = copy.deepcopy(model).to(device_type)
        ref_optim = torch.optim.Adam(ref_model.parameters(), lr=1e-2)
        for mlp in model:
            fully_shard(mlp)
        fully_shard(model)
        optim = torch.optim.Adam(model.parameters(), lr=1e-2, foreach=True)
        torch.manual_seed(42 + self.rank)
        inp = torch.randn((8, dim), device=device_type)

        ref_root_loss = ref_model(inp).sum()
        ref_root_loss.backward()
        for param in ref_model.parameters():
            dist.all_reduce(param.grad)
            param.grad.detach().div_(self.world_size)
        ref_optim.step()
        ref_optim.zero_grad()
        ref_nonroot_loss = ref_model[0](inp).sum()
        ref_nonroot_loss.backward()
        for param in ref_model.parameters():
            if param.grad is not None:
                dist.all_reduce(param.grad)
                param.grad.detach().div_(self.world_size)
        ref_optim.step()

        root_loss = model(inp).sum()
        root_loss.backward()
        device_sleep(device_type.type, int(100 * get_cycles_per_ms(device_type.type)))
        optim.step()
        optim.zero_grad()
        nonroot_loss = model[0](inp).sum()
        nonroot_loss.backward()
        optim.step()

        self.assertEqual(ref_root_loss, root_loss)
        self.assertEqual(ref_nonroot_loss, nonroot_loss)
        self.assertEqual(ref_model(inp).sum(), model(inp).sum())

    @skip_if_lt_x_gpu(2, allow_cpu=True)
    def test_multi_forward_module(self):
        self.run_subtests({"reshard_after_forward": [True, False, 2]}, self._multi_forward_module)

    def _multi_forward_module(self, reshard_after_forward):
        # As upstream: the subtest's reshard_after_forward is not passed to fully_shard.
        torch.manual_seed(42)
        model = MultiForwardModule(device_type.type)
        ref_model = copy.deepcopy(model)
        replicate(ref_model, device_ids=_device_ids(self.rank))
        ref_optim = torch.optim.Adam(ref_model.parameters(), lr=1e-2)
        fully_shard(model.inner)
        fully_shard(model)
        optim = torch.optim.Adam(model.parameters(), lr=1e-2)
        torch.manual_seed(42 + self.rank)
        inp = torch.randn((32, 4), device=device_type.type)
        for step in range(10):
            losses = []
            for one_model, one_optim in ((ref_model, ref_optim), (model, optim)):
                one_optim.zero_grad(set_to_none=step % 2 == 0)
                losses.append(one_model(inp).sum())
                losses[-1].backward()
                one_optim.step()
            self.assertEqual(losses[0], losses[1])

    @skip_if_lt_x_gpu(2, allow_cpu=True)
    def test_explicit_prefetching(self):
        torch.manual_seed(42)
        model_args = ModelArgs(n_layers=8, dropout_p=0.0)
        model = Transformer(model_args)
        ref_model = replicate(copy.deepcopy(model).to(device_type))
        ref_optim = torch.optim.AdamW(ref_model.parameters(), lr=1e-2)
        for layer in itertools.chain(model.layers, [model]):
            fully_shard(layer)
        optim = torch.optim.AdamW(model.parameters(), lr=1e-2)
        ahead = 2
        layers = list(model.layers)
        for i, layer in enumerate(layers[: len(layers) - ahead]):
            layer.set_modules_to_forward_prefetch(layers[i + 1 : i + 1 + ahead])
        for i, layer in enumerate(layers):
            if i >= ahead:
                layer.set_modules_to_backward_prefetch([layers[i - j] for j in (1, 2)])
        torch.manual_seed(42 + self.rank)
        inp = torch.randint(0, model_args.vocab_size, (2, 8), device=device_type.type)
        for _ in range(10):
            losses = []
            for one_model, one_optim in ((ref_model, ref_optim), (model, optim)):
                one_optim.zero_grad()
                losses.append(one_model(inp).sum())
                losses[-1].backward()
                one_optim.step()
            self.assertEqual(losses[0], losses[1])


class TestFullyShard1DTrainingCompose(CPUFSDPTest):
    @skip_if_lt_x_gpu(2, allow_cpu=True)
    def test_double_forward_with_nested_fsdp_and_checkpoint(self):
        self.run_subtests(
            {"reshard_after_forward": [True, False], "checkpoint_impl": ["composable", "utils"]},
            self._double_forward_with_nested_fsdp_and_checkpoint,
        )

    def _double_forward_with_nested_fsdp_and_checkpoint(
        self, reshard_after_forward, checkpoint_impl
    ):
        torch.manual_seed(42)
        vocab_size = 1024
        with torch.device(device_type):
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
        for layer in model.layers:
            fully_shard(layer.attention, reshard_after_forward=reshard_after_forward)
            fully_shard(layer.feed_forward, reshard_after_forward=reshard_after_forward)
            fully_shard(layer, reshard_after_forward=reshard_after_forward)
        fully_shard(model, reshard_after_forward=reshard_after_forward)
        torch.manual_seed(42 + self.rank)
        first = torch.randint(0, vocab_size, (2, 32), device=device_type.type)
        second = torch.randint(0, vocab_size, (2, 32), device=device_type.type)
        # Two forwards before one backward, as in DPO.
        loss = (model(first).sum() - model(second).sum()).pow(2)
        loss.backward()
        for param in model.parameters():
            if param.requires_grad:
                self.assertIsNotNone(param.grad)


class TestFullyShardShardPlacementFnMultiProcess(CPUFSDPTest):
    @skip_if_lt_x_gpu(2, allow_cpu=True)
    def test_train_parity_shard_placement_fn_shard_largest_dim(self):
        torch.manual_seed(42)
        model_args = ModelArgs(n_layers=3, dropout_p=0.0)
        model = Transformer(model_args)
        ref_model = copy.deepcopy(model).to(device_type)
        ref_optim = torch.optim.AdamW(ref_model.parameters(), lr=1e-2)
        for layer in model.layers:
            fully_shard(layer, shard_placement_fn=_largest_dim)
        fully_shard(model, shard_placement_fn=_largest_dim)
        optim = torch.optim.AdamW(model.parameters(), lr=1e-2)
        for param, ref_param in zip(model.parameters(), ref_model.parameters(), strict=True):
            self.assertEqual(param.full_tensor(), ref_param)
        torch.manual_seed(42 + self.rank)
        inp = torch.randint(0, model_args.vocab_size, (2, 16), device=device_type.type)
        for _ in range(5):
            ref_loss = ref_model(inp).sum()
            loss = model(inp).sum()
            self.assertEqual(ref_loss, loss)
            ref_loss.backward()
            loss.backward()
            for param in ref_model.parameters():
                if param.grad is not None:
                    dist.all_reduce(param.grad, op=dist.ReduceOp.AVG)
            ref_optim.step()
            optim.step()
            ref_optim.zero_grad()
            optim.zero_grad()
        for param, ref_param in zip(model.parameters(), ref_model.parameters(), strict=True):
            self.assertEqual(param.full_tensor(), ref_param)


class TestFullyShardSharedParams(CPUFSDPTest):
    @skip_if_lt_x_gpu(2, allow_cpu=True)
    def test_train_parity_with_shared_params(self):
        self.run_subtests(
            {"reshard_after_forward": [False, True], "use_activation_checkpointing": [False, True]},
            self._train_shared_params,
        )

    def _train_shared_params(self, reshard_after_forward, use_activation_checkpointing):
        torch.manual_seed(42)
        model_args = ModelArgs(n_layers=3, dropout_p=0.0, weight_tying=True)
        model = Transformer(model_args)
        ref_model = copy.deepcopy(model).to(device_type)
        replicate(ref_model, device_ids=_device_ids(self.rank))
        ref_optim = torch.optim.Adam(ref_model.parameters(), lr=1e-2)
        for module in model.modules():
            if isinstance(module, TransformerBlock):
                if use_activation_checkpointing:
                    checkpoint(module)
                fully_shard(module, reshard_after_forward=reshard_after_forward)
        fully_shard(model, reshard_after_forward=reshard_after_forward)
        optim = torch.optim.Adam(model.parameters(), lr=1e-2)
        torch.manual_seed(42 + self.rank + 1)
        for step in range(10):
            inp = torch.randint(0, model_args.vocab_size, (2, 16), device=device_type.type)
            losses = []
            for one_model, one_optim in ((ref_model, ref_optim), (model, optim)):
                one_optim.zero_grad(set_to_none=step % 2 == 0)
                losses.append(one_model(inp).sum())
                losses[-1].backward()
                one_optim.step()
            self.assertEqual(losses[0], losses[1])

    @skip_if_lt_x_gpu(2, allow_cpu=True)
    def test_layer_by_layer_shard_no_false_positive(self):
        dim = 16

        class Block(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.norm = nn.LayerNorm(dim)
                self.linear = nn.Linear(dim, dim, bias=False)

            def forward(self, x):
                return self.linear(self.norm(x))

        class Blocks(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.blocks = nn.ModuleList()

            def forward(self, x):
                for block in self.blocks:
                    x = block(x)
                return x

        import gc

        model = Blocks().to(device_type)
        for _ in range(8):
            block = Block().to(device_type)
            model.blocks.append(block)
            fully_shard(block)
            gc.collect()  # lets a freed parameter's id() be reused, as upstream provokes
        fully_shard(model)
        model(torch.randn(2, 4, dim, device=device_type.type)).sum().backward()


class TestFullyShardGradientAccumulation(CPUFSDPTest):
    @skip_if_lt_x_gpu(2, allow_cpu=True)
    def test_1f1b_microbatching(self):
        self.run_subtests(
            {"use_explicit_unshard": [False, True], "reshard_after_backward": [False, True]},
            self._1f1b_microbatching,
        )

    def _1f1b_microbatching(self, use_explicit_unshard, reshard_after_backward):
        torch.manual_seed(42)
        model_args = ModelArgs(dropout_p=0.0)
        model = Transformer(model_args)
        ref_model = copy.deepcopy(model).to(device_type)
        ref_optim = torch.optim.AdamW(ref_model.parameters(), lr=1e-2)
        for module in model.modules():
            if isinstance(module, TransformerBlock):
                fully_shard(module, reshard_after_forward=False)
        fully_shard(model, reshard_after_forward=False)
        optim = torch.optim.AdamW(model.parameters(), lr=1e-2)
        microbatches = 3
        torch.manual_seed(42 + self.rank + 1)
        inps = [
            torch.randint(0, model_args.vocab_size, (2, 16), device=device_type.type)
            for _ in range(microbatches)
        ]
        if use_explicit_unshard:
            for module in model.modules():
                if isinstance(module, FSDPModule):
                    module.unshard(async_op=True)
        losses, ref_losses = [], []
        for index, inp in enumerate(inps):
            last = index == microbatches - 1
            model.set_requires_gradient_sync(last)
            model.set_is_last_backward(last)
            if not reshard_after_backward:
                model.set_reshard_after_backward(last)
            losses.append(model(inp).sum())
            losses[-1].backward()
            ref_losses.append(ref_model(inp).sum())
            ref_losses[-1].backward()
        for param in ref_model.parameters():
            dist.all_reduce(param.grad, op=dist.ReduceOp.AVG)
        for loss, ref_loss in zip(losses, ref_losses, strict=True):
            self.assertEqual(loss, ref_loss)
        optim.step()
        ref_optim.step()
        check_sharded_parity(self, ref_model, model)


class TestFullyShardNDTraining(CPUFSDPTest):
    def init_global_mesh(self) -> DeviceMesh:
        # As upstream's: with 2 ranks, pp = dp = 1 and tp = 2.
        dp_size = 2 if self.world_size > 2 else 1
        pp_size = 2 if self.world_size > 4 else 1
        return init_device_mesh(
            device_type.type,
            (pp_size, dp_size, self.world_size // (dp_size * pp_size)),
            mesh_dim_names=("pp", "dp", "tp"),
        )

    @skip_if_lt_x_gpu(4, allow_cpu=True)  # as upstream; allow_cpu lets it run on CPU
    def test_2d_mlp_with_nd_mesh(self):
        global_mesh = self.init_global_mesh()
        self.run_subtests(
            {
                "reshard_after_forward": [False, True],
                "use_activation_checkpointing": [False, True],
                "mlp_dim": [3, 5, 16, 17],
                "foreach": [False],
            },
            functools.partial(self._2d_mlp_with_nd_mesh, global_mesh),
        )

    def _2d_mlp_with_nd_mesh(
        self, global_mesh, reshard_after_forward, use_activation_checkpointing, mlp_dim, foreach
    ):
        global_mesh = self.init_global_mesh()  # as upstream: a new mesh per subtest
        dp_mesh, tp_mesh = global_mesh["dp"], global_mesh["tp"]
        dp_pg = dp_mesh.get_group()
        torch.manual_seed(42)
        model = MLPStack(mlp_dim)
        ref_model = copy.deepcopy(model).to(device_type)
        replicate(ref_model, device_ids=_device_ids(self.rank), process_group=dp_pg)
        ref_optim = torch.optim.Adam(ref_model.parameters(), lr=1e-2, foreach=foreach)
        model.parallelize(
            tp_mesh,
            dp_mesh,
            use_activation_checkpointing,
            reshard_after_forward=reshard_after_forward,
        )
        optim = torch.optim.Adam(model.parameters(), lr=1e-2, foreach=foreach)
        torch.manual_seed(42 + dp_pg.rank() + 1)
        for step in range(10):
            inp = torch.randn((8, mlp_dim), device=device_type)
            losses = []
            for one_model, one_optim in ((ref_model, ref_optim), (model, optim)):
                one_optim.zero_grad(set_to_none=step % 2 == 0)
                losses.append(one_model(inp).sum())
                losses[-1].backward()
                one_optim.step()
            self.assertEqual(losses[0], losses[1])
        for _, param in model.named_parameters():
            self.assertIsInstance(param, DTensor)
            self.assertEqual(param.device_mesh.ndim, 2)
            self.assertEqual(len(param.placements), 2)
            self.assertEqual(param.device_mesh.mesh_dim_names, ("dp", "tp"))
