"""Named N-D meshes: ``@pytest.mark.composable(mesh=...)``.

Pure parsing, resolution and ids in process; meshes on real ranks, in fake worlds
and under torchrun through pytester runs.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from pytest_composable.distributed._mesh import (
    MeshError,
    layout_id,
    parse_meshes,
    resolve,
    size_of,
)
from tests.helpers import (
    assert_no_plugin_frames,
    collected_ids,
    launch,
    launch_output,
    output_of,
    verbose_outcomes,
)

HSDP = {"dp_replicate": 2, "dp_shard": 2}


class _Repeating(Mapping[str, int]):
    """A mapping whose iteration names one dimension twice (a user's own Mapping type)."""

    def __getitem__(self, key: str) -> int:
        return 2

    def __iter__(self) -> Iterator[str]:
        return iter(["dp", "dp"])

    def __len__(self) -> int:
        return 2


def test_parse_one_mapping_keeps_the_order() -> None:
    assert parse_meshes(HSDP) == ((("dp_replicate", 2), ("dp_shard", 2)),)


def test_parse_a_list_gives_one_layout_per_item() -> None:
    layouts = parse_meshes([{"dp": 4}, HSDP])
    assert [layout_id(layout) for layout in layouts] == ["dp4", "dp_replicate2xdp_shard2"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (4, "takes a mapping of dimension name to size"),
        ("dp", "takes a mapping of dimension name to size"),
        ({}, "has an empty mapping"),
        ([], "is an empty list"),
        ({"": 2}, "a dimension name must be a non-empty string, got ''"),
        ({"  ": 2}, "a dimension name must be a non-empty string"),
        ({3: 2}, "a dimension name must be a non-empty string, got 3"),
        (_Repeating(), "dimension 'dp' appears twice"),
        ({"dp": 0}, "dimension 'dp' has size 0"),
        ({"dp": -2}, "dimension 'dp' has size -2"),
        ({"dp": 2.0}, "dimension 'dp' has size 2.0"),
        ({"dp": "2"}, "dimension 'dp' has size '2'"),
        ({"dp": True}, "dimension 'dp' has size True"),
        ({"dp": -1, "tp": -1}, "only one dimension may be -1, got dp, tp"),
        ({"dp": 64, "tp": 32}, "dp64xtp32 needs 2048 ranks; at most 1024"),
        ([HSDP, HSDP], "lists the same mesh twice"),
        ([HSDP, 3], "takes a mapping"),
    ],
)
def test_bad_meshes_are_refused(value: Any, message: str) -> None:
    with pytest.raises(MeshError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_meshes(value)


def test_resolve_fills_in_the_rest_of_the_world() -> None:
    (layout,) = parse_meshes({"dp": 2, "tp": -1})
    assert size_of(layout) is None
    assert resolve(layout, 8) == (("dp", 2), ("tp", 4))
    assert layout_id(resolve(layout, 8)) == "dp2xtp4"


def test_resolve_refuses_a_world_the_sizes_do_not_divide() -> None:
    (layout,) = parse_meshes({"dp": 2, "tp": -1})
    with pytest.raises(MeshError, match="dp2xtp-1 needs a world size divisible by 2; got 3"):
        resolve(layout, 3)


def test_resolve_refuses_a_fixed_mesh_of_another_size() -> None:
    (layout,) = parse_meshes(HSDP)
    assert size_of(layout) == 4
    with pytest.raises(MeshError, match="dp_replicate2xdp_shard2 has 4 ranks; the world size is 8"):
        resolve(layout, 8)


REAL = """
import pytest
import torch
import torch.distributed as dist

pytestmark = pytest.mark.composable(devices=["cpu"])
GROUPS = []


@pytest.mark.composable(mesh={"dp_replicate": 2, "dp_shard": 2})
@pytest.mark.parametrize("i", range(2))
def test_hsdp(composable_world, i):
    mesh = composable_world.mesh
    assert composable_world.world_size == 4
    assert mesh.mesh_dim_names == ("dp_replicate", "dp_shard")
    assert mesh.shape == (2, 2)
    shard = torch.ones(1)
    dist.all_reduce(shard, group=mesh["dp_shard"].get_group())
    assert shard.item() == 2
    flat = mesh["dp_replicate", "dp_shard"]._flatten()
    assert flat.size() == 4
    # Kept ranks keep the layout's sub-groups: the second test sees the first's.
    GROUPS.append(mesh.get_group("dp_shard"))
    assert GROUPS[-1] is GROUPS[0]


@pytest.mark.composable(mesh={"dp_replicate": 2, "dp_shard": 2})
def test_destroys_a_sub_group(composable_world):
    dist.destroy_process_group(composable_world.mesh.get_group("dp_shard"))


@pytest.mark.composable(mesh={"dp_replicate": 2, "dp_shard": 2})
def test_after_the_destroyed_group(composable_world):
    group = composable_world.mesh.get_group("dp_shard")
    assert group is not GROUPS[0]
    shard = torch.ones(1)
    dist.all_reduce(shard, group=group)
    assert shard.item() == 2


@pytest.mark.composable(world_size=4)
def test_plain_world_keeps_a_1d_mesh(composable_world):
    assert composable_world.mesh.ndim == 1
    assert composable_world.mesh.mesh_dim_names is None
    assert composable_world.mesh.size() == 4
"""


def test_meshes_on_real_ranks(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_real=REAL)
    result = pytester.runpytest_subprocess("-v", "-p", "no:cacheprovider")
    assert result.ret == 0, output_of(result)
    assert result.parseoutcomes()["passed"] == 5
    assert_no_plugin_frames(result)


LISTED = """
import pytest

pytestmark = pytest.mark.composable(devices=["cpu"])


@pytest.mark.composable(mesh=[{"dp_shard": 4}, {"dp_replicate": 2, "dp_shard": 2}])
def test_layouts(composable_world):
    mesh = composable_world.mesh
    assert "dp_shard" in mesh.mesh_dim_names
    assert mesh["dp_shard"].size() == (4 if mesh.ndim == 1 else 2)


@pytest.mark.composable(mesh={"dp": 2, "tp": -1}, world_size=[4, 8])
def test_rest(composable_fake_world):
    world = composable_fake_world
    assert world.mesh.mesh_dim_names == ("dp", "tp")
    assert world.mesh["tp"].size() == world.world_size // 2


@pytest.mark.composable(mesh=[{"dp": 8}, {"dp": 2, "tp": -1}], world_size=8)
def test_fake_layouts(composable_fake_world):
    assert composable_fake_world.mesh.size() == 8


@pytest.mark.composable(mesh={"dp": 2, "tp": 2})
def test_single_mesh_adds_no_id(composable_fake_world):
    assert composable_fake_world.world_size == 4
"""


def test_ids_name_each_mesh_of_a_list(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_listed=LISTED)
    result = pytester.runpytest("--collect-only", "-q", "-p", "no:cacheprovider")
    assert collected_ids(result) == [
        "test_listed.py::test_layouts[cpu-dp_shard4]",
        "test_listed.py::test_layouts[cpu-dp_replicate2xdp_shard2]",
        "test_listed.py::test_rest[cpu-ws4]",
        "test_listed.py::test_rest[cpu-ws8]",
        "test_listed.py::test_fake_layouts[cpu-dp8]",
        "test_listed.py::test_fake_layouts[cpu-dp2xtp4]",
        "test_listed.py::test_single_mesh_adds_no_id[cpu]",
    ]


def test_listed_meshes_run_and_k_selects_by_dimension(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_listed=LISTED)
    result = pytester.runpytest_subprocess("-v", "-p", "no:cacheprovider", "-k", "dp_replicate")
    assert verbose_outcomes(result) == {
        "test_listed.py::test_layouts[cpu-dp_replicate2xdp_shard2]": "PASSED"
    }
    result = pytester.runpytest_subprocess("-v", "-p", "no:cacheprovider")
    assert result.ret == 0, output_of(result)
    assert result.parseoutcomes()["passed"] == 7


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        ("mesh=4", "composable(mesh=...) takes a mapping of dimension name to size"),
        ("mesh={}", "composable(mesh=...) has an empty mapping"),
        ('mesh={"": 2}', "composable(mesh=...): a dimension name must be a non-empty string*"),
        ('mesh={"dp": 0}', "composable(mesh=...): dimension 'dp' has size 0*"),
        ('mesh={"dp": -3}', "composable(mesh=...): dimension 'dp' has size -3*"),
        ('mesh={"dp": 2.5}', "composable(mesh=...): dimension 'dp' has size 2.5*"),
        ('mesh={"dp": False}', "composable(mesh=...): dimension 'dp' has size False*"),
        ('mesh={"dp": -1, "tp": -1}', "composable(mesh=...): only one dimension may be -1*"),
        ('mesh={"dp": 1025}', "composable(mesh=...): dp1025 needs 1025 ranks; at most 1024"),
        (
            'mesh={"dp": 2, "tp": 2}, world_size=8',
            "composable(mesh=...): dp2xtp2 has 4 ranks; the world size is 8",
        ),
        (
            'mesh={"dp": 2, "tp": -1}, world_size=[4, 6, 7]',
            "composable(mesh=...): dp2xtp-1 needs a world size divisible by 2; got 7",
        ),
        (
            'mesh={"dp": 3, "tp": -1}',
            "composable(mesh=...): dp3xtp-1 needs a world size divisible by 3; got 2",
        ),
        ('mesh={"dp": 2}, rank=2', "composable(rank=2) is not below world size 2"),
    ],
)
@pytest.mark.parametrize("fixture", ["composable_world", "composable_fake_world"])
def test_bad_mesh_markers_are_collection_errors(
    pytester: pytest.Pytester, marker: str, message: str, fixture: str
) -> None:
    pytester.makepyfile(
        test_bad=f"""
        import pytest

        @pytest.mark.composable({marker})
        def test_x({fixture}):
            pass
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.INTERRUPTED, output_of(result)
    result.stdout.fnmatch_lines([f"*test_bad.py::test_x: {message}*"])
    assert_no_plugin_frames(result)


def test_a_bad_mesh_is_an_error_on_a_test_without_a_world(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_bad="""
        import pytest

        @pytest.mark.composable(mesh={"dp": 0})
        def test_x(composable_device):
            pass
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.INTERRUPTED, output_of(result)
    result.stdout.fnmatch_lines(["*test_x: composable(mesh=...): dimension 'dp' has size 0*"])


LAUNCHED = """
import pytest
import torch
import torch.distributed as dist

pytestmark = pytest.mark.composable(devices=["cpu"])


@pytest.mark.composable(mesh={"dp": 2, "tp": 2})
def test_needs_four(composable_world):
    pass


@pytest.mark.composable(mesh={"dp": -1})
def test_rest_is_the_launch(composable_world):
    assert composable_world.mesh.mesh_dim_names == ("dp",)
    assert composable_world.mesh.size() == 2


@pytest.mark.composable(backend="gloo")
def test_marker_backend_equal_to_the_session(composable_world):
    assert composable_world.backend == "gloo"
    tensor = torch.ones(1)
    dist.all_reduce(tensor)
    assert tensor.item() == 2


@pytest.mark.composable(backend="mpi")
def test_marker_backend_of_another_kind(composable_world):
    pass
"""


def test_meshes_and_backends_under_torchrun(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_launched=LAUNCHED)
    launched = launch(
        pytester.path,
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node=2",
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-rs",
            "-v",
        ],
    )
    output = launch_output(launched)
    assert launched.returncode == 0, output
    assert "2 passed, 2 skipped" in output, output
    assert "test_marker_backend_equal_to_the_session[cpu] PASSED" in output, output
    assert "composable: mesh dp2xtp2 needs world size 4; torchrun launched 2 ranks" in output, (
        output
    )
    assert "composable: needs backend mpi; this torchrun session's cpu worlds use gloo" in output
