"""The dtype axis: ``composable_dtype``, its selection, ids, values, skips and bad input.

Parsing and the device probe are checked in-process; the option, environment, ini,
marker, ids and what the fixtures build run pytest with ``pytester`` (in-process where
torch's being loaded does not matter). Accelerators are simulated as in
``tests/test_simulated_accelerators.py``: a patched cuda device count, and a patched
probe where a test needs a device that cannot run a dtype.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable

import pytest
import torch

import pytest_composable._dtypes as dtypes
from pytest_composable._dtypes import DtypeError, parse_dtype, parse_dtypes, probe
from pytest_composable.state import state_of
from tests.helpers import (
    BUILTIN_NAMES,
    PLAIN_TEST,
    assert_clear_error,
    assert_no_plugin_frames,
    assert_usage_error,
    collected_ids,
    name_setting,
    verbose_outcomes,
)
from tests.test_simulated_accelerators import simulate_cuda

DTYPE_ENV = "PYTEST_COMPOSABLE_DTYPE"
DTYPE_TEST = "def test_x(composable_device, composable_dtype):\n    pass\n"
# Names of every kind that is not a floating dtype a test can run over.
BAD_NAMES = ["int64", "fp8", "complex64", "float8_e4m3fn", "bool", "float128", "bf-16"]


@pytest.fixture(autouse=True)
def _no_dtype_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    # The root conftest isolates the device variable only; a dtype variable set where the
    # suite runs would change every selection here.
    monkeypatch.delenv(DTYPE_ENV, raising=False)


# --- parsing (pure) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("float16", "float16"),
        ("fp16", "float16"),
        ("half", "float16"),
        ("bfloat16", "bfloat16"),
        ("BF16", "bfloat16"),
        (" bf16 ", "bfloat16"),
        ("torch.bfloat16", "bfloat16"),
        ("float32", "float32"),
        ("fp32", "float32"),
        ("float", "float32"),
        ("float64", "float64"),
        ("fp64", "float64"),
        ("double", "float64"),
        (torch.float16, "float16"),
        (torch.bfloat16, "bfloat16"),
        (torch.float64, "float64"),
    ],
)
def test_parse_dtype_gives_torch_names(text: object, name: str) -> None:
    assert parse_dtype(text) == name


@pytest.mark.parametrize(
    "text", [*BAD_NAMES, "", "torch.int64", torch.int64, torch.complex64, None, True, 16]
)
def test_parse_dtype_refuses_everything_else(text: object) -> None:
    with pytest.raises(DtypeError, match="is not a floating dtype a test can run over; known: "):
        parse_dtype(text)


def test_parse_dtype_cuts_a_long_value() -> None:
    with pytest.raises(DtypeError) as error:
        parse_dtype("x" * 5000)
    assert "(5000 characters)" in str(error.value)
    assert len(str(error.value)) < 400


def test_parse_dtypes_keeps_each_once_in_order() -> None:
    assert parse_dtypes(["bf16", "fp32", "float16", "bfloat16", "fp32"]) == (
        "bfloat16",
        "float32",
        "float16",
    )
    with pytest.raises(DtypeError, match="no dtype given"):
        parse_dtypes([])


# --- the device probe -------------------------------------------------------------


def _no_subprocess(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("no subprocess expected")

    monkeypatch.setattr(subprocess, "run", refuse)


def test_host_devices_run_every_dtype_unprobed(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_subprocess(monkeypatch)
    for device in ("cpu", "meta"):
        assert probe(torch.device(device), dtypes.DTYPES) == dict.fromkeys(dtypes.DTYPES)


@pytest.mark.parametrize("dtype", dtypes.DTYPES)
@pytest.mark.parametrize("model", ["composite_model", "nested_sequential_model"])
def test_models_train_in_every_dtype_on_cpu(model: str, dtype: str) -> None:
    """Why cpu is not probed: each built-in model runs forward and backward in each dtype
    (also on the torch 2.6 floor)."""
    from pytest_composable.registry import BUILTIN_MODELS, build_input, build_model

    spec = next(spec for spec in BUILTIN_MODELS if spec.name == model)
    cpu = torch.device("cpu")
    built = build_model(spec, cpu, 0, dtypes.to_torch(dtype))
    built(build_input(spec, cpu, 0, 4, dtypes.to_torch(dtype))).sum().backward()
    assert all(p.grad is not None and p.grad.dtype == p.dtype for p in built.parameters())


def test_a_device_this_machine_lacks_fails_the_real_probe() -> None:
    """A real subprocess probe (this machine has no CUDA device): every dtype gets a reason."""
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    found = probe(torch.device("cuda:0"), ["float16", "bfloat16"])
    assert set(found) == {"float16", "bfloat16"}
    assert all(reason and len(reason) <= 250 for reason in found.values()), found
    assert not torch.cuda.is_initialized()


def test_the_probe_runs_in_process_where_the_runtime_is_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _no_subprocess(monkeypatch)
    monkeypatch.setattr(dtypes, "initialised", lambda device_type: torch.cuda)
    found = probe(torch.device("cuda:0"), ["bfloat16"])
    # This torch has no CUDA: the Linear cannot go there, and the error is the reason.
    assert found["bfloat16"] is not None
    assert found["bfloat16"].split(":")[0].endswith("Error"), found


@pytest.mark.parametrize(
    ("returncode", "stdout", "stderr", "reason"),
    [
        (1, "", "Traceback...\nImportError: no torch\n", "the probe of cuda:0 failed: ImportError"),
        (-9, "", "", "the probe of cuda:0 failed: exit status -9"),
        (0, "not json\n", "", "the probe of cuda:0 failed: exit status 0"),
        (0, '{"float16": null}\n', "", "the probe of cuda:0 failed"),
    ],
    ids=["crashed", "killed", "garbled", "incomplete"],
)
def test_a_failed_probe_gives_every_dtype_it_did_not_answer_a_reason(
    monkeypatch: pytest.MonkeyPatch, returncode: int, stdout: str, stderr: str, reason: str
) -> None:
    def run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(command, returncode, stdout, stderr)

    monkeypatch.setattr(subprocess, "run", run)
    found = probe(torch.device("cuda:0"), ["float16", "bfloat16"])
    assert found["bfloat16"] is not None
    assert found["bfloat16"].startswith(reason)
    if returncode == 0 and "null" in stdout:
        assert found["float16"] is None  # what it did answer stands


def test_each_device_is_probed_once_per_session(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, tuple[str, ...]]] = []

    def fake_probe(device: torch.device, names: Iterable[str]) -> dict[str, str | None]:
        wanted = tuple(names)
        calls.append((str(device), wanted))
        return {name: "no" if name == "bfloat16" else None for name in wanted}

    monkeypatch.setattr(dtypes, "probe", fake_probe)
    state = state_of(pytester.parseconfigure())
    cuda = torch.device("cuda:0")
    assert state.dtype_skip(cuda, "float32") is None
    assert calls == []  # float32 runs everywhere: never probed
    assert state.dtype_skip(cuda, "bfloat16") == "composable: cuda:0 cannot run bfloat16: no"
    assert state.dtype_skip(cuda, "float16") is None
    assert state.dtype_skip(cuda, "bfloat16") is not None
    assert calls == [("cuda:0", ("float16", "bfloat16", "float64"))]


# --- selection and ids --------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "env", "ini", "dtypes_"),
    [
        ([], None, None, ["float32"]),
        (["--composable-dtype=bf16"], None, None, ["bfloat16"]),
        (
            ["--composable-dtype=fp64", "--composable-dtype", "fp16"],
            None,
            None,
            ["float64", "float16"],
        ),
        (["--composable-dtype=bf16,float32, bfloat16"], None, None, ["bfloat16", "float32"]),
        ([], "fp16,bf16", None, ["float16", "bfloat16"]),
        ([], None, "composable_dtype = fp64 bf16", ["float64", "bfloat16"]),
        ([], None, "composable_dtype = fp64,fp16", ["float64", "float16"]),
        (["--composable-dtype=fp16"], "bf16", "composable_dtype = fp64", ["float16"]),
        ([], "bf16", "composable_dtype = fp64", ["bfloat16"]),
    ],
    ids=[
        "default",
        "cli",
        "cli-repeated",
        "cli-list-aliases-duplicates",
        "env",
        "ini-space-list",
        "ini-comma-list",
        "cli-over-env-and-ini",
        "env-over-ini",
    ],
)
def test_selection_precedence_and_ids(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    env: str | None,
    ini: str | None,
    dtypes_: list[str],
) -> None:
    if env is not None:
        monkeypatch.setenv(DTYPE_ENV, env)
    if ini is not None:
        pytester.makeini(f"[pytest]\n{ini}\n")
    pytester.makepyfile(test_x=DTYPE_TEST)
    result = pytester.runpytest("--collect-only", "-q", "--composable-device=cpu,meta", *args)
    assert collected_ids(result) == [
        f"test_x.py::test_x[{device}-{dtype}]" for device in ("cpu", "meta") for dtype in dtypes_
    ]


MARKED = """
import pytest

pytestmark = pytest.mark.composable(dtypes=["fp16"])

@pytest.mark.composable(dtypes=["bf16", "float32", "bfloat16"])
def test_own(composable_dtype):
    pass

def test_module(composable_dtype):
    pass

def test_unmarked_fixture_free(composable_device):
    pass

def test_model(composable_model, composable_dtype):
    pass

@pytest.mark.composable(dtypes=["fp64"])
class TestClass:
    def test_class(self, composable_dtype):
        pass

    @pytest.mark.composable(dtypes="bf16")
    def test_method(self, composable_dtype):
        pass
"""


def test_the_marker_replaces_the_session_selection_and_the_closest_wins(
    pytester: pytest.Pytester,
) -> None:
    """A marker's dtypes are what that test runs (``--composable-dtype=float64`` is not
    intersected with them), in its order, each once; ids put the dtype after the device."""
    pytester.makepyfile(test_x=MARKED)
    result = pytester.runpytest(
        "--collect-only", "-q", "--composable-device=cpu", "--composable-dtype=float64"
    )
    ids = collected_ids(result)
    assert ids == [
        "test_x.py::test_own[bfloat16]",
        "test_x.py::test_own[float32]",
        "test_x.py::test_module[float16]",
        "test_x.py::test_unmarked_fixture_free[cpu]",
        *(f"test_x.py::test_model[{name}-cpu-float16]" for name in BUILTIN_NAMES),
        "test_x.py::TestClass::test_class[float64]",
        "test_x.py::TestClass::test_method[bfloat16]",
    ]


def test_ids_follow_the_device_and_come_before_the_world_size(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_x="""
import pytest

@pytest.mark.composable(world_size=[2, 4], dtypes=["bf16"])
def test_fake(composable_fake_world, composable_dtype):
    pass

def test_device_model(composite_model, composable_input, composable_dtype):
    pass
"""
    )
    result = pytester.runpytest("--collect-only", "-q", "--composable-device=cpu,meta")
    assert collected_ids(result) == [
        "test_x.py::test_fake[cpu-bfloat16-ws2]",
        "test_x.py::test_fake[cpu-bfloat16-ws4]",
        "test_x.py::test_fake[meta-bfloat16-ws2]",
        "test_x.py::test_fake[meta-bfloat16-ws4]",
        "test_x.py::test_device_model[cpu-float32]",
        "test_x.py::test_device_model[meta-float32]",
    ]


UNCHANGED = """
import torch

def test_device(composable_device):
    pass

def test_model(composite_model, composable_input):
    assert composite_model.l1.weight.dtype == torch.float32
    assert composable_input.dtype == torch.float32

def test_every_model(composable_model):
    assert all(p.dtype == torch.float32 for p in composable_model.parameters())
"""


def test_tests_without_composable_dtype_keep_ids_and_float32(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_x=UNCHANGED)
    plain = pytester.runpytest("-v", "--composable-device=cpu")
    chosen = pytester.runpytest("-v", "--composable-device=cpu", "--composable-dtype=bf16,fp16")
    chosen.assert_outcomes(passed=7)
    assert verbose_outcomes(chosen) == verbose_outcomes(plain)
    assert "test_x.py::test_every_model[composite_model-cpu]" in verbose_outcomes(chosen)


# --- what the fixtures build ------------------------------------------------------

VALUES = """
import pytest
import torch

EXPECTED_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16,
                   "float32": torch.float32, "float64": torch.float64}


def float32_reference(spec, seed, batch):
    # The value rule by hand: the float32 model and input built on cpu after a seed.
    torch.manual_seed(seed)
    model = spec.build(torch.device("cpu"))
    torch.manual_seed(seed)
    return model, spec.make_input(torch.device("cpu"), batch)


@pytest.mark.composable(dtypes=["bf16", "fp16", "fp64", "fp32"], devices=["cpu"])
def test_converted_after_the_float32_build(
    request, composable_model, composable_model_spec, composable_input, composable_dtype,
    composable_seed, composable_batch_size,
):
    assert composable_dtype is EXPECTED_DTYPES[request.node.callspec.params["composable_dtype"]]
    model, batch = float32_reference(composable_model_spec, composable_seed, composable_batch_size)
    got = composable_model.state_dict()
    expected = model.to(composable_dtype).state_dict()
    assert list(got) == list(expected)
    for name, tensor in expected.items():
        assert got[name].dtype == composable_dtype, name
        assert torch.equal(got[name], tensor), name
    assert composable_input.dtype == composable_dtype
    assert torch.equal(composable_input, batch.to(composable_dtype))
    composable_model(composable_input).sum().backward()


@pytest.mark.composable(dtypes=["bf16"], devices=["meta"])
def test_meta(composite_param_model, composable_input, composable_dtype):
    model = composite_param_model
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert composable_input.dtype == torch.bfloat16


@pytest.mark.composable(dtypes=["bf16", "fp64"], cast_models=False, devices=["cpu"])
def test_mixed_precision_keeps_float32_storage(
    composite_model, composable_input, composable_dtype
):
    assert composite_model.l1.weight.dtype == torch.float32
    assert composable_input.dtype == torch.float32
    assert composable_dtype in (torch.bfloat16, torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=composable_dtype == torch.bfloat16):
        composite_model(composable_input)


@pytest.mark.composable(dtypes=["bf16"], cast_models=True, devices=["cpu"])
def test_cast_models_true_is_the_default(composite_model, composable_dtype):
    assert composite_model.l1.weight.dtype == torch.bfloat16


@pytest.mark.composable(devices=["cpu"])
@pytest.mark.parametrize("composable_dtype", [torch.float64, "bf16"])
def test_a_directly_parametrized_dtype_is_followed(composite_model, composable_dtype):
    assert composite_model.l1.weight.dtype in (torch.float64, torch.bfloat16)
"""


def test_models_and_inputs_are_the_float32_ones_converted(pytester: pytest.Pytester) -> None:
    """Every built-in model in every dtype equals the float32 model ``.to(dtype)`` exactly."""
    pytester.makepyfile(test_x=VALUES)
    result = pytester.runpytest("-q", "--composable-seed=7")
    result.assert_outcomes(passed=len(BUILTIN_NAMES) * 4 + 1 + 2 + 1 + 2)


TOKENS_CONFTEST = """
import pytest
import torch
from torch import nn

from pytest_composable import ModelSpec


@pytest.hookimpl(optionalhook=True)
def pytest_composable_models(config):
    return [
        ModelSpec(
            "embedding",
            build=lambda device: nn.Embedding(10, 4, device=device),
            make_input=lambda device, batch: torch.randint(0, 10, (batch, 3), device=device),
        )
    ]
"""


def test_non_floating_inputs_stay_as_they_are(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(TOKENS_CONFTEST)
    pytester.makepyfile(
        test_x="""
import pytest
import torch

@pytest.mark.composable(models=["embedding"], devices=["cpu"], dtypes=["bf16"])
def test_tokens(composable_model, composable_input, composable_dtype):
    assert composable_model.weight.dtype == torch.bfloat16
    assert composable_input.dtype == torch.int64
    assert composable_model(composable_input).dtype == torch.bfloat16
"""
    )
    pytester.runpytest().assert_outcomes(passed=1)


def test_a_bad_dtype_from_an_override_fails_the_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_x="""
import pytest
import torch

@pytest.mark.composable(devices=["cpu"])
@pytest.mark.parametrize("composable_dtype", [torch.int64])
def test_x(composite_model, composable_dtype):
    pass
"""
    )
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*composable: composable_dtype gave 'torch.int64' is not a floating dtype*"]
    )
    assert_no_plugin_frames(result)


# --- devices that cannot run a dtype -------------------------------------------------

SIMULATED = """
import torch

def test_x(composable_device, composable_dtype):
    assert isinstance(composable_dtype, torch.dtype)

def test_again(composable_device, composable_dtype):
    pass
"""


def test_a_device_that_cannot_run_a_dtype_skips_saying_why(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    simulate_cuda(monkeypatch, 1)
    probed: list[str] = []
    real_probe = dtypes.probe

    def fake_probe(device: torch.device, names: Iterable[str]) -> dict[str, str | None]:
        probed.append(str(device))
        if device.type == "cpu":
            return real_probe(device, names)
        return {
            name: "RuntimeError: no bf16 here" if name == "bfloat16" else None for name in names
        }

    monkeypatch.setattr(dtypes, "probe", fake_probe)
    pytester.makepyfile(test_x=SIMULATED)
    result = pytester.runpytest(
        "-v", "-rs", "--composable-device=cpu,cuda", "--composable-dtype=bf16,fp16"
    )
    outcomes = verbose_outcomes(result)
    assert outcomes == {
        f"test_x.py::{test}[{device}-{dtype}]": (
            "SKIPPED" if (device, dtype) == ("cuda:0", "bfloat16") else "PASSED"
        )
        for test in ("test_x", "test_again")
        for device in ("cpu", "cuda:0")
        for dtype in ("bfloat16", "float16")
    }
    result.stdout.fnmatch_lines(
        [
            f"SKIPPED [[]1[]] test_x.py:{line}: composable: cuda:0 cannot run bfloat16: "
            "RuntimeError: no bf16 here"
            for line in (3, 6)
        ]
    )
    assert sorted(probed) == ["cpu", "cuda:0"]  # each device once for the session


def test_the_real_probe_skips_a_device_it_cannot_use(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """End to end on a simulated GPU this torch cannot use: the subprocess probe fails,
    the pair skips with its reason, float32 (never probed) runs."""
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    simulate_cuda(monkeypatch, 1)
    pytester.makepyfile(test_x=DTYPE_TEST)
    result = pytester.runpytest(
        "-v", "-rs", "--composable-device=cuda", "--composable-dtype=fp32,fp16"
    )
    assert verbose_outcomes(result) == {
        "test_x.py::test_x[cuda:0-float32]": "PASSED",
        "test_x.py::test_x[cuda:0-float16]": "SKIPPED",
    }
    result.stdout.fnmatch_lines(["SKIPPED * composable: cuda:0 cannot run float16: *"])
    assert not torch.cuda.is_initialized()


# --- bad input ----------------------------------------------------------------------


@pytest.mark.parametrize("source", ["cli", "env", "ini"])
@pytest.mark.parametrize("value", ["int64", "fp8", "complex64", "bf16,int64", "torch.int64"])
def test_a_bad_dtype_is_a_usage_error(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, source: str, value: str
) -> None:
    """At configure, before collection, even in a suite that never uses the fixture."""
    pytester.makepyfile(test_x=PLAIN_TEST)
    args, named = name_setting(pytester, monkeypatch, source, value, "dtype")
    bad = value.split(",")[-1]
    result = pytester.runpytest(*args)
    assert_usage_error(
        result,
        f"ERROR: composable: {named}: '{bad}' is not a floating dtype a test can run over; "
        "known: float16 (fp16), bfloat16 (bf16), float32 (fp32), float64 (fp64)",
    )
    assert len([line for line in result.errlines if line.strip()]) == 1, result.errlines


@pytest.mark.parametrize("source", ["cli", "env", "ini"])
def test_an_empty_dtype_value_is_a_usage_error(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    pytester.makepyfile(test_x=PLAIN_TEST)
    args, named = name_setting(pytester, monkeypatch, source, "", "dtype")
    result = pytester.runpytest(*args)
    assert_usage_error(result, f"ERROR: composable: {named}: no dtype given; known: float16*")


BAD_MARKERS = {
    "int64": 'dtypes=["int64"]',
    "fp8": 'dtypes=["bf16", "fp8"]',
    "complex": 'dtypes="complex64"',
    "torch_int": "dtypes=[torch.int64]",
    "empty": "dtypes=[]",
    "cast_string": 'cast_models="no"',
    "cast_int": "cast_models=0",
    "cast_none": "cast_models=None",
}


def test_bad_markers_are_collection_errors_naming_the_test(pytester: pytest.Pytester) -> None:
    for name, keywords in BAD_MARKERS.items():
        pytester.makepyfile(
            **{
                f"test_{name}": (
                    "import pytest\nimport torch\n\n"
                    f"@pytest.mark.composable({keywords})\n"
                    "def test_it(composable_dtype):\n    pass\n"
                )
            }
        )
    result = pytester.runpytest()
    # Files are collected, so reported, in name order.
    assert_clear_error(
        result,
        "*test_cast_int.py::test_it: composable(cast_models=...) takes True or False, got 0*",
        "*test_cast_none.py::test_it: composable(cast_models=...) takes True or False, got None*",
        "*test_cast_string.py::test_it: composable(cast_models=...) takes True or False, got 'no'*",
        "*test_complex.py::test_it: composable(dtypes=...): 'complex64' is not a floating*",
        "*test_empty.py::test_it: composable(dtypes=...) is empty*",
        "*test_fp8.py::test_it: composable(dtypes=...): 'fp8' is not a floating dtype*",
        "*test_int64.py::test_it: composable(dtypes=...): 'int64' is not a floating dtype*",
        "*test_torch_int.py::test_it: composable(dtypes=...): 'torch.int64' is not a floating*",
    )
    assert f"{len(BAD_MARKERS)} errors" in result.stdout.str()


def test_a_bad_marker_errors_also_where_the_test_has_no_dtype(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_x='import pytest\n\n@pytest.mark.composable(dtypes=["int64"])\n'
        "def test_it():\n    pass\n"
    )
    assert_clear_error(pytester.runpytest(), "*test_x.py::test_it: composable(dtypes=...)*")


# --- reports and documentation -------------------------------------------------------


def test_header_names_the_dtypes_when_chosen(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(test_x=PLAIN_TEST)
    default = pytester.runpytest()
    default.stdout.fnmatch_lines(["composable: torch *, seed: 0"])
    default.stdout.no_fnmatch_line("*dtypes (*")
    chosen = pytester.runpytest("--composable-dtype=bf16,fp32")
    chosen.stdout.fnmatch_lines(
        ["composable: torch *, seed: 0, dtypes (--composable-dtype): bfloat16, float32"]
    )
    monkeypatch.setenv(DTYPE_ENV, "fp16")
    from_env = pytester.runpytest()
    from_env.stdout.fnmatch_lines([f"composable: torch *, dtypes ({DTYPE_ENV}): float16"])


def test_outcome_table_per_dtype(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_x="""
import torch

def test_x(composable_dtype):
    assert composable_dtype != torch.float16
"""
    )
    result = pytester.runpytest("--composable-dtype=bf16,fp16,fp64")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*- composable: outcomes per device, world size and dtype -*",
            "dtype     passed  failed",
            "bfloat16       1       0",  # rows in the order the reports came
            "float64        1       0",
            "float16        0       1",
        ]
    )
    one = pytester.runpytest("--composable-dtype=bf16", "--composable-device=cpu")
    one.stdout.no_fnmatch_line("*outcomes per*")


def test_fixture_documentation_and_option_help(pytester: pytest.Pytester) -> None:
    lines = pytester.runpytest("--fixtures", "-v").outlines
    start = next(i for i, line in enumerate(lines) if line.startswith("composable_dtype -- "))
    end = lines.index("", start)
    doc = " ".join(" ".join(lines[start + 1 : end]).split())
    for phrase in (
        "The floating ``torch.dtype`` this test runs in",
        "``@pytest.mark.composable(dtypes=[...])`` (what that test runs: it replaces the "
        "session's selection) > ``--composable-dtype`` > ``PYTEST_COMPOSABLE_DTYPE`` > ini "
        "``composable_dtype`` > ``float32``",
        "``test_x[cpu-bfloat16]``",
        "``composable(cast_models=False)``",
        "keep their ids and float32 models",
    ):
        assert phrase in doc, doc
    text = " ".join(pytester.runpytest("--help").stdout.str().split())
    for phrase in (
        "--composable-dtype=DTYPE",
        "the PYTEST_COMPOSABLE_DTYPE environment variable > the composable_dtype ini "
        "setting > the default (float32)",
        "composable_dtype (args):",
    ):
        assert phrase in text


RECORD_TORCH = """
import sys

def pytest_unconfigure(config):
    with open("torch_imported.txt", "w") as f:
        f.write(str("torch" in sys.modules))
"""


def test_naming_dtypes_does_not_import_torch(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(RECORD_TORCH)
    pytester.makepyfile(test_x=PLAIN_TEST)
    result = pytester.runpytest_subprocess("--composable-dtype=bf16,fp16")
    assert result.ret == pytest.ExitCode.OK
    assert (pytester.path / "torch_imported.txt").read_text() == "False"


WORLD = """
import pytest
import torch
import torch.distributed as dist

pytestmark = pytest.mark.composable(devices=["cpu"])


def test_option(composable_world, composite_model, composable_input, composable_dtype):
    assert composite_model.l1.weight.dtype == composable_dtype == torch.float64
    assert composable_input.dtype == torch.float64
    total = composite_model(composable_input).sum().detach()
    dist.all_reduce(total)
    assert total.dtype == torch.float64


@pytest.mark.composable(dtypes=["bf16"])
def test_marker(composable_world, composite_model, composable_dtype):
    assert composite_model.l1.weight.dtype == torch.bfloat16
"""


def test_ranks_build_in_the_test_dtype(pytester: pytest.Pytester) -> None:
    """The ranks read the same option and marker: a world test's models are in its dtype."""
    pytester.makepyfile(test_world=WORLD)
    result = pytester.runpytest_subprocess(
        "-v", "-p", "no:cacheprovider", "--composable-dtype=fp64"
    )
    assert verbose_outcomes(result) == {
        "test_world.py::test_option[cpu-float64]": "PASSED",
        "test_world.py::test_marker[cpu-bfloat16]": "PASSED",
    }
