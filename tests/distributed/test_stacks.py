"""Pure logic of failure reports: reading faulthandler's dumps, choosing the root cause."""

from __future__ import annotations

import faulthandler
import tempfile
import threading

from pytest_composable.distributed._outcome import RankResult, root_first
from pytest_composable.distributed._stacks import (
    is_library,
    parse_dump,
    render_thread,
    running_thread,
    summarize,
)


def _dump_here() -> str:
    with tempfile.TemporaryFile("w+") as f:
        faulthandler.dump_traceback(f, all_threads=True)
        f.seek(0)
        return f.read()


def _user_helper() -> str:
    return _dump_here()


def test_a_dump_reads_back_as_this_threads_frames() -> None:
    stop = threading.Event()
    other = threading.Thread(target=stop.wait, daemon=True)
    other.start()
    try:
        threads = parse_dump(_user_helper())
    finally:
        stop.set()
        other.join()
    assert len(threads) >= 2
    thread = running_thread(threads)
    assert thread is not None
    names = [frame.name for frame in thread.frames]
    # Most recent call first, as faulthandler writes them.
    assert names[:3] == [
        "_dump_here",
        "_user_helper",
        "test_a_dump_reads_back_as_this_threads_frames",
    ]
    assert thread.frames[0].path == __file__


def test_library_frames_are_pythons_installed_packages_and_the_plugins() -> None:
    import pytest

    import pytest_composable.distributed._pool as pool

    assert is_library(threading.__file__)
    assert is_library(pytest.__file__)
    assert is_library(pool.__file__)
    assert is_library("<frozen importlib._bootstrap>")
    assert not is_library(__file__)


DUMP = """\
Thread 0x00007f0000000001 (most recent call first):
  File "{lib}/threading.py", line 324 in wait
  File "{lib}/threading.py", line 1002 in _bootstrap

Current thread 0x00007f0000000002 (most recent call first):
  File "{site}/torch/distributed/distributed_c10d.py", line 3252 in all_reduce
  File "{site}/torch/distributed/c10d_logger.py", line 83 in wrapper
  File "{site}/torch/distributed/c10d_logger.py", line 80 in inner
  File "{site}/torch/distributed/c10d_logger.py", line 70 in outer
  File "/work/tests/helpers.py", line 5 in reduce_all
  File "/work/tests/test_x.py", line 9 in test_x
  File "{site}/_pytest/python.py", line 157 in pytest_pyfunc_call
  File "{site}/pluggy/_callers.py", line 103 in _multicall
"""


def _fake_dump() -> str:
    import sysconfig

    paths = sysconfig.get_paths()
    return DUMP.format(lib=paths["stdlib"], site=paths["purelib"])


def test_a_rank_is_shown_by_its_own_frames_then_what_it_waits_in() -> None:
    frame, lines = summarize(_fake_dump())
    assert frame is not None
    assert frame.where() == "test_x (test_x.py:9)"  # the outermost user frame
    assert lines[0] == '  File "/work/tests/test_x.py", line 9 in test_x'
    assert lines[1] == '  File "/work/tests/helpers.py", line 5 in reduce_all'
    assert lines[2] == "  ... in the library:"
    assert lines[3].endswith("line 70 in outer")  # what the user's code called
    assert lines[4].endswith("line 80 in inner")
    assert lines[5] == "  ... (1 more)"  # wrapper
    assert lines[6].endswith("line 3252 in all_reduce")  # where it waits now
    assert lines[7] == "  (2 frames of pytest, pluggy and this plugin around them left out)"
    assert len(lines) == 8


def test_a_stack_without_user_frames_shows_its_innermost_frames() -> None:
    threads = parse_dump(_fake_dump())
    assert running_thread(threads[:1]) is None
    assert [line.rsplit(" ", 1)[-1] for line in render_thread(threads[0])] == [
        "_bootstrap",
        "wait",
    ]


def test_the_root_cause_is_the_first_own_failure_then_the_first_consequence() -> None:
    results = {
        0: RankResult(order=0, consequence=True),  # a collective error, seen first
        1: RankResult(order=2),
        2: RankResult(order=1),
        3: RankResult(),  # passed
    }
    assert root_first(results) == [2, 1, 0]
    only_consequences = {
        0: RankResult(order=1, consequence=True),
        1: RankResult(order=0, consequence=True),
    }
    assert root_first(only_consequences) == [1, 0]


def test_an_empty_or_foreign_dump_reads_as_no_threads() -> None:
    assert parse_dump("") == []
    assert parse_dump("Fatal Python error: nothing\n") == []
    assert summarize("") == (None, ["(no stack)"])
