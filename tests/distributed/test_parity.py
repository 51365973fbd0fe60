"""``pytest_composable.parity``: sharded and training parity, on real ranks, in a fake world
and in a plain process; what passes when the models agree, and what each failure says."""

from __future__ import annotations

import copy
import re
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from pytest_composable import World
from pytest_composable.distributed._fake import fake_world
from pytest_composable.parity import assert_sharded_parity, assert_training_parity
from tests.helpers import assert_no_pool_directory, output_of, verbose_outcomes

pytestmark = pytest.mark.composable(devices=["cpu"])

# FSDP2 orders its collectives with stream events, on CPU those of torch.cpu.Stream,
# which has none on torch 2.6: there fully_shard shards on CPU, but cannot train.
FSDP2_TRAINS_ON_CPU = all(hasattr(torch.cpu.Stream, m) for m in ("record_event", "wait_event"))


class Block(nn.Module):
    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.in_proj = nn.Linear(dim, 4 * dim)
        self.out_proj = nn.Linear(4 * dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.dropout(self.out_proj(torch.relu(self.in_proj(x))))


class Net(nn.Module):
    def __init__(self, dim: int = 8, dropout: float = 0.0) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim, dropout) for _ in range(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


def _pair(dropout: float = 0.0) -> tuple[Net, Net]:
    torch.manual_seed(0)
    model = Net(dropout=dropout)
    return copy.deepcopy(model), model


def _raises(fn: object, *args: object, **kwargs: object) -> str:
    """The message of the AssertionError ``fn`` raises."""
    with pytest.raises(AssertionError) as info:
        fn(*args, **kwargs)  # type: ignore[operator]
    return str(info.value)


# --- one process, no process group ----------------------------------------------------


def test_training_parity_with_dropout_returns_the_losses() -> None:
    reference, model = _pair(dropout=0.5)
    x = torch.randn(4, 8)
    steps: list[int] = []
    losses = assert_training_parity(
        reference, model, x, steps=3, step_hook=lambda step, r, s: steps.append(step)
    )
    assert steps == [0, 1, 2]
    assert len(losses) == 3
    assert all(isinstance(v, float) for pair in losses for v in pair)
    assert all(r == s for r, s in losses)
    assert losses[0] != losses[2]  # it trained
    assert not dist.is_initialized()
    # The gradients of the last step stay; parameters moved alike.
    assert_sharded_parity(reference, model)
    assert all(p.grad is not None for p in model.parameters())
    # Dropout drew the same masks in both only because the random state was restored:
    # the same two forwards one after the other differ.
    assert not torch.equal(reference(x), model(x))


def test_inputs_a_list_a_callable_a_tuple_and_a_custom_forward() -> None:
    batches = [torch.randn(2, 8) for _ in range(3)]
    reference, model = _pair()
    assert len(assert_training_parity(reference, model, batches, steps=3)) == 3
    seen: list[int] = []

    def item(step: int) -> torch.Tensor:
        seen.append(step)
        return batches[step]

    assert_training_parity(reference, model, item, steps=3)
    assert seen == [0, 1, 2]
    assert_training_parity(reference, model, (batches[0],), steps=2)
    calls: list[nn.Module] = []

    def forward(m: nn.Module, item: dict[str, torch.Tensor]) -> torch.Tensor:
        calls.append(m)
        return m(item["x"]) * item["scale"]

    losses = assert_training_parity(
        reference,
        model,
        [{"x": b, "scale": torch.tensor(2.0)} for b in batches],
        steps=2,
        forward=forward,
        loss=lambda out: out.pow(2).mean(),
        optimizer=lambda params: torch.optim.SGD(params, lr=0.1),
    )
    assert calls == [reference, model, reference, model]
    assert len(losses) == 2


def test_bad_inputs_are_clear_errors() -> None:
    reference, model = _pair()
    with pytest.raises(ValueError, match=r"inputs has 2 item\(s\) for steps=3: give one item"):
        assert_training_parity(reference, model, [torch.randn(2, 8)] * 2, steps=3)
    with pytest.raises(TypeError, match=r"an input item is a tensor or a tuple .* not a dict"):
        assert_training_parity(reference, model, [{"x": torch.randn(2, 8)}], steps=1)
    with pytest.raises(TypeError, match="inputs is a int"):
        assert_training_parity(reference, model, 3, steps=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="steps must be an integer >= 1, got 0"):
        assert_training_parity(reference, model, torch.randn(2, 8), steps=0)


def test_a_parameter_that_differs_names_itself_and_its_differences() -> None:
    reference, model = _pair()
    with torch.no_grad():
        model.blocks[1].in_proj.weight[2, 3] += 0.5
        model.blocks[1].in_proj.weight[4, :2] += 1e-3
    message = _raises(assert_sharded_parity, reference, model)
    first = message.splitlines()[0]
    assert first.startswith(
        "parameter 'blocks.1.in_proj.weight' outside a process group differs from the "
        "reference: largest absolute difference 0.5 at index [2, 3] (sharded "
    ), message
    assert re.search(
        r"largest relative difference [\d.e+-]+ at index \[2, 3\] \(rtol 1.3e-06\)", first
    )
    assert first.endswith("; 2 other entries differ (3 of 256)"), first
    assert "atol 1e-05" in first


def test_gradients_missing_on_either_side_or_different() -> None:
    reference, model = _pair()
    for m in (reference, model):
        m(torch.ones(2, 8)).sum().backward()
    assert_sharded_parity(reference, model)
    model.blocks[0].out_proj.bias.grad = None
    assert _raises(assert_sharded_parity, reference, model).startswith(
        "gradient of 'blocks.0.out_proj.bias' outside a process group is missing (None) on "
        "the sharded model but present on the reference"
    )
    reference.blocks[0].out_proj.bias.grad = None
    model.blocks[1].out_proj.weight.grad = None
    assert _raises(assert_sharded_parity, reference, model).startswith(
        "gradient of 'blocks.1.out_proj.weight' outside a process group is missing (None) "
        "on the sharded model"
    )
    reference.blocks[1].out_proj.weight.grad = None
    reference.blocks[0].in_proj.weight.grad = None
    assert "is missing (None) on the reference but present on the sharded model" in _raises(
        assert_sharded_parity, reference, model
    )
    model.blocks[0].in_proj.weight.grad = None
    model.blocks[1].in_proj.bias.grad[0] += 1  # type: ignore[index]
    message = _raises(assert_sharded_parity, reference, model)
    assert message.startswith(
        "gradient of 'blocks.1.in_proj.bias' outside a process group differs from the "
        "reference: largest absolute difference 1 at index [0]"
    ), message
    assert "0 other entries differ (1 of 32)" in message


def test_names_counts_and_prefixes_to_ignore() -> None:
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    reference, model = _pair(dropout=0.3)
    for i, block in enumerate(model.blocks):
        model.blocks[i] = checkpoint_wrapper(block)
    message = _raises(assert_sharded_parity, reference, model)
    assert message.startswith(
        "parameter names differ outside a process group: parameter #0 is "
        "'blocks.0.in_proj.weight' on the reference and "
        "'blocks.0._checkpoint_wrapped_module.in_proj.weight' on the sharded model"
    ), message
    prefixes = ("_checkpoint_wrapped_module.",)
    assert_training_parity(
        reference,
        model,
        torch.randn(4, 8),
        steps=3,
        step_hook=lambda s, r, m: assert_sharded_parity(r, m, prefixes_to_ignore=prefixes),
    )
    assert_sharded_parity(reference, model, prefixes_to_ignore=prefixes)
    model.tail = nn.Linear(1, 1)
    assert _raises(assert_sharded_parity, reference, model, prefixes_to_ignore=prefixes) == (
        "parameter counts differ outside a process group: the reference has 8, the sharded "
        "model 10; the sharded model's 'tail.weight' has no counterpart"
    )


def test_a_loss_that_differs_names_the_step() -> None:
    reference, model = _pair()
    hooked: list[int] = []

    def forward(m: nn.Module, item: tuple[torch.Tensor, int]) -> torch.Tensor:
        x, step = item
        out: torch.Tensor = m(x)
        return out + 1e-3 if m is model and step == 2 else out

    x = torch.randn(2, 8)
    message = _raises(
        assert_training_parity,
        reference,
        model,
        lambda step: (x, step),
        forward=forward,
        step_hook=lambda step, r, s: hooked.append(step),
    )
    assert hooked == [0, 1]
    assert re.match(
        r"loss outside a process group at step 2 differs from the reference's: sharded "
        r"[-\d.e]+, reference [-\d.e]+; absolute difference 0\.0160\d* \(atol 1e-05\), relative "
        r"difference [\d.e-]+ \(rtol 1.3e-06\)$",
        message,
    ), message


def test_step_hook_checks_name_the_step_and_nan_never_matches() -> None:
    reference, model = _pair()

    def hook(step: int, r: nn.Module, s: nn.Module) -> None:
        if step == 1:
            s.blocks[0].in_proj.bias.grad[3] = float("nan")
        assert_sharded_parity(r, s)

    message = _raises(assert_training_parity, reference, model, torch.randn(2, 8), step_hook=hook)
    assert message.startswith(
        "gradient of 'blocks.0.in_proj.bias' outside a process group at step 1 differs from "
        "the reference: largest absolute difference nan at index [3]"
    ), message


def test_tolerances_follow_the_less_precise_dtype() -> None:
    reference, model = _pair()
    with torch.no_grad():
        model.blocks[0].in_proj.weight.mul_(1 + 1e-3)  # 1e-3 relative: above float32's
    assert "rtol 1.3e-06" in _raises(assert_sharded_parity, reference, model)
    assert_sharded_parity(reference, model, rtol=2e-3)
    assert_sharded_parity(reference, model.to(torch.bfloat16))  # bfloat16's 3.2e-2
    with torch.no_grad():
        model.blocks[0].in_proj.weight.mul_(1.1)
    assert "(rtol 0.032)" in _raises(assert_sharded_parity, reference, model)
    reference.double()
    model.double()
    reference.blocks[0].in_proj.weight.data = model.blocks[0].in_proj.weight.data * (1 + 1e-6)
    assert "(rtol 1e-07)" in _raises(assert_sharded_parity, reference, model)
    # Training a bfloat16 copy of a float32 model: bfloat16's tolerances apply.
    reference, model = _pair()
    model.to(torch.bfloat16)
    losses = assert_training_parity(
        reference,
        model,
        torch.randn(2, 8),
        steps=3,
        forward=lambda m, x: m(x.to(next(m.parameters()).dtype)).float(),
    )
    assert losses[0][0] != losses[0][1]


# --- fake worlds ----------------------------------------------------------------------


@pytest.mark.composable(world_size=4, rank=3)
def test_fully_shard_in_a_fake_world(composable_fake_world: World) -> None:
    from torch.distributed.fsdp import fully_shard

    reference, model = _pair()
    for block in model.blocks:
        fully_shard(block, mesh=composable_fake_world.mesh)
    fully_shard(model, mesh=composable_fake_world.mesh)
    assert_sharded_parity(reference, model)  # sharding is local: values allow this
    with torch.no_grad():
        reference.blocks[1].out_proj.weight[7, 0] -= 2.0  # rank 3 holds rows 6 and 7
    message = _raises(assert_sharded_parity, reference, model)
    lines = message.splitlines()
    assert lines[0].startswith(
        "parameter 'blocks.1.out_proj.weight' on rank 3 of 4 differs from the reference: "
        "largest absolute difference 2 at index [1, 0]"
    ), message
    assert lines[0].endswith("0 other entries differ (1 of 64)")
    assert lines[1] == (
        "  local shard of a DTensor with mesh (dim0=4) on cpu, placements (Shard(dim=0)), "
        "compared with the reference laid out the same way on this rank"
    )
    # Where values allow, training too: the flags' all_reduce runs on the fake backend.
    reference, model = _pair(dropout=0.2)
    assert_training_parity(reference, model, torch.randn(2, 8), steps=2)
    with torch.no_grad():
        model.blocks[0].out_proj.bias.add_(1.0)
    message = _raises(assert_training_parity, reference, model, torch.randn(2, 8))
    assert message.startswith("loss on rank 3 of 4 at step 0 differs from the reference's"), message


@pytest.mark.composable(mesh={"dp": 2, "tp": 2})
def test_shard_shard_layout_and_partial_are_clear_errors(composable_fake_world: World) -> None:
    from torch.distributed.tensor import DTensor, Partial, Shard

    mesh = composable_fake_world.mesh
    reference = nn.Linear(4, 8)
    for placements, expected in (
        ((Shard(0), Shard(0)), "shards one tensor dimension on two mesh dimensions with plain "),
        ((Shard(1), Partial()), "has a Partial placement (Shard(dim=1), Partial(sum))"),
    ):
        model = copy.deepcopy(reference)
        local = torch.zeros(2, 4) if placements[1] == Shard(0) else torch.zeros(8, 2)
        weight = DTensor.from_local(local, mesh, placements, run_check=False)
        model.weight = nn.Parameter(weight)
        message = _raises(assert_sharded_parity, reference, model)
        assert message.startswith(f"parameter 'weight' on rank 0 of 4 {expected}"), message
        if placements[1] == Shard(0):
            assert "Shard placements (Shard(dim=0), Shard(dim=0)): FSDP lays such a " in message
            assert "which distribute_tensor() cannot reproduce" in message


def test_local_shards_without_src_data_rank_match_distribute_tensor() -> None:
    """The chunking used where ``distribute_tensor`` has no ``src_data_rank`` (torch
    2.6) gives, rank by rank, the shards FSDP and TP hold (and, where torch has it,
    what ``distribute_tensor(..., src_data_rank=None)`` gives)."""
    import inspect

    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor
    from torch.distributed.tensor.placement_types import _StridedShard

    from pytest_composable._parity_compare import _chunk_locally

    full = torch.arange(40.0).view(8, 5)
    blocks = full.view(4, 2, 5)  # four blocks of two rows
    has_src = "src_data_rank" in inspect.signature(distribute_tensor).parameters
    for rank in range(4):
        dp, tp = divmod(rank, 2)
        with fake_world(4, rank, torch.device("cpu"), 0):
            mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
            cases = {
                # FSDP + TP colwise: TP takes halves, FSDP a half of each: block 2*tp + dp
                (_StridedShard(0, split_factor=2), Shard(0)): blocks[2 * tp + dp],
                (Shard(0), Shard(1)): full[4 * dp : 4 * dp + 4, [0, 1, 2] if tp == 0 else [3, 4]],
                (Replicate(), Shard(0)): full[4 * tp : 4 * tp + 4],
                (Shard(1), Replicate()): full[:, [0, 1, 2] if dp == 0 else [3, 4]],
            }
            for placements, expected in cases.items():
                local = _chunk_locally(full, mesh, placements)
                assert torch.equal(local, expected), (rank, placements)
                if has_src:
                    dtensor = distribute_tensor(full, mesh, placements, src_data_rank=None)
                    assert torch.equal(dtensor.to_local(), expected), (rank, placements)
            one_d = init_device_mesh("cpu", (4,))
            # 3 rows over 4 ranks: chunks of 1, the last rank holds none
            local = _chunk_locally(full[:3], one_d, (Shard(0),))
            assert torch.equal(local, full[rank : rank + 1] if rank < 3 else full[:0])


# --- real ranks -----------------------------------------------------------------------

WORLD = """
import copy

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard

from pytest_composable.parity import assert_sharded_parity, assert_training_parity

pytestmark = pytest.mark.composable(devices=["cpu"], world_size=2)
TRAINS = all(hasattr(torch.cpu.Stream, m) for m in ("record_event", "wait_event"))
STEPS = 3
W = "blocks.0.in_proj.weight"


class Block(nn.Module):
    def __init__(self, dim, dropout):
        super().__init__()
        self.in_proj = nn.Linear(dim, 4 * dim)
        self.out_proj = nn.Linear(4 * dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return x + self.dropout(self.out_proj(torch.relu(self.in_proj(x))))


class Net(nn.Module):
    def __init__(self, dim=8, dropout=0.0):
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim, dropout) for _ in range(2))

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


def sharded(mesh, dropout=0.0, wrap=None):
    torch.manual_seed(0)
    model = Net(dropout=dropout)
    reference = copy.deepcopy(model)
    for i, block in enumerate(model.blocks):
        if wrap is not None:
            block = model.blocks[i] = wrap(block)
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return reference, model


def check_every_step(reference, model, prefixes=()):
    return lambda step, r, s: assert_sharded_parity(r, s, prefixes_to_ignore=prefixes)


def test_fully_shard_with_dropout(composable_world):
    reference, model = sharded(composable_world.mesh, dropout=0.3)
    assert_sharded_parity(reference, model)
    if not TRAINS:
        return
    losses = assert_training_parity(
        reference, model, torch.randn(4, 8), steps=STEPS,
        step_hook=check_every_step(reference, model),
    )
    assert len(losses) == STEPS
    assert losses[0] != losses[-1]
    assert_sharded_parity(reference, model)


def test_checkpoint_wrapped(composable_world):
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    reference, model = sharded(composable_world.mesh, dropout=0.3, wrap=checkpoint_wrapper)
    prefixes = ("_checkpoint_wrapped_module.",)
    with pytest.raises(AssertionError, match="parameter names differ on rank"):
        assert_sharded_parity(reference, model)
    assert_sharded_parity(reference, model, prefixes_to_ignore=prefixes)
    if TRAINS:
        assert_training_parity(
            reference, model, torch.randn(4, 8), steps=STEPS,
            step_hook=check_every_step(reference, model, prefixes),
        )


def test_per_rank_inputs(composable_world):
    from torch.distributed._composable.replicate import replicate

    world = composable_world
    batches = [torch.randn(4, 8, generator=torch.Generator().manual_seed(10 * world.rank + s))
               for s in range(STEPS)]
    if not TRAINS:
        pytest.skip("FSDP2 cannot train on CPU here")
    reference, model = sharded(world.mesh)
    replicate(reference)
    assert_training_parity(reference, model, batches, steps=STEPS,
                           step_hook=check_every_step(reference, model))
    # A plain reference is right only with its gradients averaged over ranks...
    reference, model = sharded(world.mesh)

    def average(step, r, s):
        for p in r.parameters():
            dist.all_reduce(p.grad)
            p.grad /= world.world_size
        assert_sharded_parity(r, s)

    assert_training_parity(reference, model, batches, steps=STEPS, step_hook=average)
    # ... and wrong without: its first update differs, so the second loss does.
    reference, model = sharded(world.mesh)
    with pytest.raises(AssertionError, match="at step 1"):
        assert_training_parity(reference, model, batches, steps=STEPS)


def test_one_rank_parameter_differs(composable_world):
    reference, model = sharded(composable_world.mesh)
    if composable_world.rank == 1:
        with torch.no_grad():
            model.blocks[0].in_proj.weight.to_local()[0, 0] += 1.0
    with pytest.raises(AssertionError) as info:
        assert_sharded_parity(reference, model)
    print(f"MESSAGE {composable_world.rank}: {info.value}")


def test_one_rank_gradient_differs_and_one_is_missing(composable_world):
    if not TRAINS:
        pytest.skip("FSDP2 cannot train on CPU here")
    rank = composable_world.rank

    def perturb(step, r, s):
        if step == 1 and rank == 1:
            s.blocks[1].out_proj.bias.grad.to_local()[1] += 0.25
        assert_sharded_parity(r, s)

    def drop(step, r, s):
        if step == 2 and rank == 0:
            s.blocks[0].in_proj.bias.grad = None
        assert_sharded_parity(r, s)

    for hook in (perturb, drop):
        reference, model = sharded(composable_world.mesh)
        with pytest.raises(AssertionError) as info:
            assert_training_parity(reference, model, torch.randn(4, 8), steps=STEPS, step_hook=hook)
        print(f"MESSAGE {hook.__name__}{rank}: {info.value}")


def test_one_rank_loss_differs(composable_world):
    if not TRAINS:
        pytest.skip("FSDP2 cannot train on CPU here")
    reference, model = sharded(composable_world.mesh)
    hooked = []

    def forward(m, item):
        x, step = item
        out = m(x)
        return out + 0.5 if m is model and step == 2 and composable_world.rank == 1 else out

    x = torch.randn(4, 8)
    with pytest.raises(AssertionError) as info:
        assert_training_parity(reference, model, lambda step: (x, step), forward=forward,
                               step_hook=lambda step, r, s: hooked.append(step))
    assert hooked == [0, 1]
    print(f"MESSAGE {composable_world.rank}: {info.value}")


def test_reported_failure(composable_world):
    reference, model = sharded(composable_world.mesh)
    if composable_world.rank == 1:
        with torch.no_grad():
            model.blocks[1].out_proj.bias.to_local()[2] -= 3.0
    assert_sharded_parity(reference, model)


@pytest.mark.composable(world_size=4, mesh={"dp_replicate": 2, "dp_shard": 2})
def test_hsdp(composable_world):
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    reference, model = sharded(composable_world.mesh)
    assert model.blocks[0].in_proj.weight.placements == (Replicate(), Shard(0))
    assert_sharded_parity(reference, model)
    if TRAINS:
        assert_training_parity(reference, model, torch.randn(4, 8), steps=STEPS,
                               step_hook=check_every_step(reference, model))
    bad = copy.deepcopy(reference)
    bad.blocks[0].in_proj.weight = nn.Parameter(
        distribute_tensor(reference.blocks[0].in_proj.weight.detach(), composable_world.mesh,
                          [Shard(0), Shard(0)])
    )
    with pytest.raises(AssertionError) as info:
        assert_sharded_parity(reference, bad)
    print(f"MESSAGE {composable_world.rank}: {info.value}")


@pytest.mark.composable(world_size=4, mesh={"dp": 2, "tp": 2})
def test_fsdp_tp(composable_world):
    from torch.distributed.tensor.parallel import (
        ColwiseParallel, RowwiseParallel, parallelize_module,
    )

    mesh = composable_world.mesh
    torch.manual_seed(0)
    model = Net()
    reference = copy.deepcopy(model)
    for block in model.blocks:
        parallelize_module(
            block, mesh["tp"], {"in_proj": ColwiseParallel(), "out_proj": RowwiseParallel()}
        )
        fully_shard(block, mesh=mesh["dp"])
    fully_shard(model, mesh=mesh["dp"])
    assert model.blocks[0].in_proj.weight.placements[0].split_factor == 2  # strided
    assert_sharded_parity(reference, model)
    if TRAINS:
        assert_training_parity(reference, model, torch.randn(4, 8), steps=STEPS,
                               step_hook=check_every_step(reference, model))
        assert_sharded_parity(reference, model)
"""


def _section(output: str, test: str) -> str:
    """The part of a ``-rA`` run's output about ``test`` (its passes or failure section)."""
    found = re.search(
        rf"_+ {re.escape(test)}\[cpu[^\]]*\] _+\n(.*?)(?=\n_+ test_\w+\[|\n=+ )", output, re.S
    )
    assert found, f"no section for {test}:\n{output}"
    return found.group(1)


def _messages(section: str) -> dict[str, str]:
    """``{key: the message}`` from the ``MESSAGE key: ...`` lines the ranks printed."""
    messages: dict[str, str] = {}
    for match in re.finditer(r"^MESSAGE (\w+): (.*?)(?=^MESSAGE |^-{5,}|\Z)", section, re.S | re.M):
        messages[match.group(1)] = match.group(2).strip()
    return messages


def _differs(message: str, head: str, count: str) -> None:
    """``message``'s first line starts with ``head`` and tells ``count``."""
    first = message.splitlines()[0]
    assert first.startswith(head), message
    assert count in first, message


def _elsewhere(check: str, failed: int, here: str) -> str:
    """What a rank of 2 where ``check`` passed says when rank ``failed`` failed."""
    return (
        f"{check} failed on rank(s) {failed} of 2, not here ({here}, where everything "
        f"matched): see the report of rank {failed}"
    )


def _check_training_failures(output: str) -> None:
    messages = _messages(_section(output, "test_one_rank_gradient_differs_and_one_is_missing"))
    _differs(
        messages["perturb1"],
        "gradient of 'blocks.1.out_proj.bias' on rank 1 of 2 at step 1 differs from the "
        "reference: largest absolute difference 0.25 at index [1]",
        "0 other entries differ (1 of 4)",
    )
    assert messages["perturb0"] == _elsewhere(
        "assert_sharded_parity", 1, "on rank 0 of 2 at step 1"
    )
    assert messages["drop0"] == (
        "gradient of 'blocks.0.in_proj.bias' on rank 0 of 2 at step 2 is missing (None) on "
        "the sharded model but present on the reference"
    )
    assert messages["drop1"].startswith("assert_sharded_parity failed on rank(s) 0 of 2")
    messages = _messages(_section(output, "test_one_rank_loss_differs"))
    assert re.match(
        r"loss on rank 1 of 2 at step 2 differs from the reference's: sharded [-\d.e]+, "
        r"reference [-\d.e]+; absolute difference 16 \(atol 1e-05\), relative difference "
        r"[\d.e-]+ \(rtol 1.3e-06\)$",
        messages["1"],
    ), messages
    assert messages["0"] == _elsewhere("assert_training_parity", 1, "on rank 0 of 2 at step 2")


def test_on_real_ranks(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))
    monkeypatch.setenv("COLUMNS", "400")  # the short summary's lines whole
    pytester.makepyfile(test_parity_world=WORLD)
    started = time.monotonic()
    result = pytester.runpytest_subprocess(
        "-v", "-rA", "-p", "no:cacheprovider", "--composable-timeout=60", "--durations=0"
    )
    took = time.monotonic() - started
    output = output_of(result)
    outcomes = verbose_outcomes(result)
    trains = "PASSED" if FSDP2_TRAINS_ON_CPU else "SKIPPED"
    name = "test_parity_world.py::{}[cpu]"
    assert outcomes == {
        name.format("test_fully_shard_with_dropout"): "PASSED",
        name.format("test_checkpoint_wrapped"): "PASSED",
        name.format("test_per_rank_inputs"): trains,
        name.format("test_one_rank_parameter_differs"): "PASSED",
        name.format("test_one_rank_gradient_differs_and_one_is_missing"): trains,
        name.format("test_one_rank_loss_differs"): trains,
        name.format("test_reported_failure"): "FAILED",
        name.format("test_hsdp"): "PASSED",
        name.format("test_fsdp_tp"): "PASSED",
    }, output
    assert "timed out" not in output, output

    # One rank's parameter differs: it says so; the other rank is not left waiting.
    messages = _messages(_section(output, "test_one_rank_parameter_differs"))
    _differs(
        messages["1"],
        "parameter 'blocks.0.in_proj.weight' on rank 1 of 2 differs from the reference: "
        "largest absolute difference 1 at index [0, 0]",
        "0 other entries differ (1 of 128)",
    )
    assert "placements (Shard(dim=0))" in messages["1"].splitlines()[1]
    assert messages["0"] == _elsewhere("assert_sharded_parity", 1, "on rank 0 of 2")

    if FSDP2_TRAINS_ON_CPU:
        _check_training_failures(output)

    # A failure left to pytest: the failing rank's cause heads the report, fast.
    result.stdout.fnmatch_lines(
        [
            "FAILED *test_reported_failure[[]cpu[]] - AssertionError: parameter "
            "'blocks.1.out_proj.bias' on rank 1 of 2 differs from the reference: *"
        ]
    )
    failed = _section(output, "test_reported_failure")
    assert (
        "E       AssertionError: parameter 'blocks.1.out_proj.bias' on rank 1 of 2 differs"
        in failed
    ), failed
    assert (
        "E       pytest_composable.parity.FailedOnAnotherRank: assert_sharded_parity failed on "
        "rank(s) 1 of 2, not here (on rank 0 of 2, where everything matched)" in failed
    ), failed
    # The root cause's rank comes first; the traceback ends at the test's own line.
    assert failed.index("_ rank 1 _") < failed.index("_ rank 0 _")
    assert "_parity_agree.py" not in failed
    duration = re.search(r"^([\d.]+)s call +\S*test_reported_failure", output, re.M)
    assert duration, output
    assert float(duration.group(1)) < 10, output

    messages = _messages(_section(output, "test_hsdp"))
    assert set(messages) == {"0", "1", "2", "3"}
    for rank, message in messages.items():
        assert message.startswith(
            f"parameter 'blocks.0.in_proj.weight' on rank {rank} of 4 shards one tensor "
            "dimension on two mesh dimensions"
        ), message
    assert_no_pool_directory(temp)
    assert took < 300
