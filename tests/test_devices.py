"""Device specs against a simulated machine: unit cases and a fuzz test of the parser.

Everything here is in-process and pure: ``resolve_selection`` gets a device list
made up here (``cuda`` and ``xpu`` devices are plain ``torch.device`` values,
which need no accelerator), so no pytest run is started.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_composable._options import DeviceSelection, parse_seed, split_specs
from pytest_composable.devices import (
    DeviceSpecError,
    MissingDeviceError,
    matcher,
    resolve_specs,
)
from pytest_composable.state import resolve_selection

AVAILABLE = [
    torch.device("cpu"),
    torch.device("meta"),
    torch.device("cuda", 0),
    torch.device("cuda", 1),
    torch.device("xpu", 0),
]
SOURCE = "--composable-device"
ARABIC_INDIC_ONE = "\u0661"


@pytest.mark.parametrize(
    "spec",
    ["cuda:256", f"cuda:{ARABIC_INDIC_ONE}", "cuda:99999999999999999999", "cuda:2", "mps"],
    ids=["wraps-in-torch", "other-script-digit", "overflows-in-torch", "index-missing", "type"],
)
def test_an_index_must_name_a_device_of_this_machine(spec: str) -> None:
    """Before: torch.device wrapped ``cuda:256`` to cuda:0, ``cuda:\u0661`` was read
    (through int()) as cuda:1, and a 20-digit index overflowed (an INTERNALERROR)."""
    with pytest.raises(MissingDeviceError, match="is not available on this machine"):
        resolve_specs([spec], AVAILABLE)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("cuda:01", "is not a device spec"),
        ("cuda:-1", "is not a device spec"),
        ("cuda:", "is not a device spec"),
        ("cpu:0", "cpu takes no device index"),
        (f"cpu:{ARABIC_INDIC_ONE}", "cpu takes no device index"),
        ("cdua", "is not a device type torch knows"),
        ("m\u212aldnn", "is not a device spec"),  # the Kelvin sign lower-cases to "k"
    ],
)
def test_a_malformed_spec_is_not_a_missing_device(spec: str, message: str) -> None:
    with pytest.raises(DeviceSpecError, match=message) as raised:
        resolve_specs([spec], AVAILABLE)
    assert not isinstance(raised.value, MissingDeviceError)


def test_an_error_quotes_at_most_about_200_characters() -> None:
    spec = "x" * 10_000
    with pytest.raises(DeviceSpecError) as raised:
        resolve_specs([spec], AVAILABLE)
    message = str(raised.value)
    assert "... (10000 characters)" in message
    assert len(message) < 400


def test_matcher_keeps_the_devices_a_marker_names() -> None:
    cuda1 = torch.device("cuda", 1)
    assert [d for d in AVAILABLE if matcher("cuda", AVAILABLE)(d)] == AVAILABLE[2:4]
    assert [d for d in AVAILABLE if matcher("CUDA:1", AVAILABLE)(d)] == [cuda1]
    assert [d for d in AVAILABLE if matcher("all", AVAILABLE)(d)] == AVAILABLE


@pytest.mark.parametrize(
    ("text", "seed"), [("0", 0), (" 7 ", 7), (str(2**64 - 1), 2**64 - 1)], ids=str
)
def test_seed_in_range(text: str, seed: int) -> None:
    assert parse_seed(text) == seed


@pytest.mark.parametrize(
    "text", ["-1", str(2**64), "1_000", "+3", "", "three", ARABIC_INDIC_ONE, "0x10"]
)
def test_seed_out_of_range_or_not_an_integer(text: str) -> None:
    with pytest.raises(ValueError, match="2\\*\\*64"):
        parse_seed(text)


# The fuzz test. Device types the simulated machine has, lacks, or torch does not know.
TYPES = ["cpu", "meta", "cuda", "CUDA", "xpu", "mps", "hpu", "all", "cdua", "privateuseone"]
INDICES = st.one_of(
    st.integers(0, 2**80).map(str),
    st.from_regex(r"\A[0-9]{1,30}\Z"),
    st.text(st.characters(categories=["Nd"]), min_size=1, max_size=25),
    st.text(max_size=10),
)
SPECS = st.one_of(
    st.text(),
    st.sampled_from(TYPES),
    st.builds(
        lambda pad, device_type, index: f"{pad}{device_type}:{index}{pad}",
        st.sampled_from(["", " ", "\t"]),
        st.sampled_from(TYPES),
        INDICES,
    ),
)
WORKERS = st.one_of(st.none(), st.integers(0, 7))


def expected_devices(spec: str, worker: int | None) -> list[torch.device]:
    """What a spec that resolved must have named: no other device, ever."""
    text = spec.strip()
    assert text.isascii(), f"{spec!r} resolved though it is not ASCII"
    text = text.lower()
    if text == "all":
        return AVAILABLE
    device_type, _, index = text.partition(":")
    if index:
        assert index == str(int(index)), f"{spec!r} resolved with index {index!r}"
        return [d for d in AVAILABLE if d.type == device_type and d.index == int(index)]
    of_type = [d for d in AVAILABLE if d.type == device_type]
    return [of_type[(worker or 0) % len(of_type)]]


@settings(max_examples=1500, deadline=None)
@given(spec=SPECS, worker=WORKERS)
def test_fuzz_one_spec_names_its_device_or_is_a_usage_error(spec: str, worker: int | None) -> None:
    selection = DeviceSelection(split_specs([spec]), SOURCE)
    try:
        selected = resolve_selection(selection, AVAILABLE, worker)
    except pytest.UsageError as error:
        message = str(error)
    else:
        message = ""
    if message:
        assert message.startswith(f"composable: {SOURCE}: ")
        assert len(message) < 500  # the value is quoted in part
        return
    assert len(selection.specs) == 1, selection  # no spec at all is a usage error
    assert [s.device for s in selected] == expected_devices(spec, worker)


@settings(max_examples=500, deadline=None)
@given(values=st.lists(st.lists(SPECS, max_size=4).map(",".join), max_size=3), worker=WORKERS)
def test_fuzz_option_values_give_devices_of_this_machine_or_a_usage_error(
    values: list[str], worker: int | None
) -> None:
    specs = split_specs(values)
    try:
        selected = resolve_selection(DeviceSelection(specs, SOURCE), AVAILABLE, worker)
    except pytest.UsageError:
        return
    expected = [d for spec in specs for d in expected_devices(spec, worker)]
    assert [s.device for s in selected] == list(dict.fromkeys(expected))
