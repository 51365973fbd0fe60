"""A rank's Python stack, as a report shows it, and what kind of error a rank's is
(torch-free: torch is imported only to judge an error).

When a test is cut short (a deadline, or another rank failed), the main process
has each rank still running write its stacks with :mod:`faulthandler` (the only
way to read a thread blocked inside a collective's C++ wait) and reads the dump
back here as data: threads of frames. A report then shows the frames that are
the user's own (a test, its fixtures, its helpers) first, and of the library
frames only the few innermost ones, which say what the rank waits in: the
hundred frames of pytest, pluggy and this plugin around a test never change
and say nothing.
"""

from __future__ import annotations

import os
import re
import sysconfig
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import FrameType, TracebackType

__all__ = [
    "Frame",
    "Thread",
    "in_torch_distributed",
    "is_consequence",
    "is_library",
    "own_frame",
    "parse_dump",
    "render_thread",
    "running_thread",
    "summarize",
]

# faulthandler's own format, which is fixed: a header per thread, then one line per frame.
_THREAD = re.compile(r"^(?:Current thread|Thread) 0x[0-9a-fA-F]+.*\(most recent call first\):$")
_FRAME = re.compile(r'^  File "(?P<path>.*)", line (?P<line>\d+|\?\?\?) in (?P<name>.*)$')
_LIBRARY_SHOWN = 3  # innermost library frames shown below a rank's own frames


@dataclass(frozen=True)
class Frame:
    path: str
    line: int
    name: str

    @property
    def user(self) -> bool:
        return not is_library(self.path)

    def where(self) -> str:
        return f"{self.name} ({os.path.basename(self.path)}:{self.line})"

    def as_line(self) -> str:
        return f'  File "{self.path}", line {self.line} in {self.name}'


@dataclass(frozen=True)
class Thread:
    frames: tuple[Frame, ...]  # most recent call first, as faulthandler writes them


@lru_cache(maxsize=1)
def _library_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths}
    # This plugin's own frames (serve, the runtest protocol) are library frames for
    # the user, wherever it is installed (an editable install is not in site-packages).
    roots.add(str(Path(__file__).resolve().parents[1]))
    return tuple(os.path.realpath(root) + os.sep for root in roots)


def is_library(path: str) -> bool:
    """Whether a frame in ``path`` belongs to Python, an installed package or this plugin,
    not to the user's tests, conftests and helpers."""
    if path.startswith("<"):  # <frozen importlib._bootstrap>, <string>
        return True
    return os.path.realpath(path).startswith(_library_roots())


def in_torch_distributed(frame: FrameType) -> bool:
    """Whether ``frame`` runs code of ``torch.distributed`` (a collective, its wrappers)."""
    return str(frame.f_globals.get("__name__", "")).startswith("torch.distributed")


def is_consequence(error: BaseException, traceback_: TracebackType | None) -> bool:
    """Whether ``error`` is of the kind another rank's failure causes, decided from its type
    and where it was raised: one of torch's distributed errors (``DistError``: a backend,
    network or store error), or a plain ``RuntimeError`` raised inside
    ``torch.distributed`` (a collective's timeout, abort or closed connection, which the
    backend raises as ``RuntimeError``). Anything else (a failed assertion, a
    ``ValueError``, a misuse of a collective) is the rank's own failure."""
    import torch.distributed as dist

    distributed_error = getattr(dist, "DistError", None)
    if distributed_error is not None and isinstance(error, distributed_error):
        return True
    if type(error) is not RuntimeError:
        return False
    tb = traceback_
    while tb is not None:
        if in_torch_distributed(tb.tb_frame):
            return True
        tb = tb.tb_next
    return False


def parse_dump(text: str) -> list[Thread]:
    """The threads of a faulthandler dump (``dump_traceback(all_threads=True)``)."""
    threads: list[Thread] = []
    frames: list[Frame] | None = None
    for line in text.splitlines():
        if _THREAD.match(line):
            if frames is not None:
                threads.append(Thread(tuple(frames)))
            frames = []
            continue
        match = _FRAME.match(line)
        if match and frames is not None:
            number = match["line"]
            frames.append(
                Frame(match["path"], int(number) if number.isdigit() else 0, match["name"])
            )
    if frames is not None:
        threads.append(Thread(tuple(frames)))
    return threads


def running_thread(threads: Sequence[Thread]) -> Thread | None:
    """The thread that runs the test: the one with the most user frames (the rank's main
    thread, inside the test or a fixture); ``None`` if no thread has any."""
    best = max(threads, key=lambda t: sum(f.user for f in t.frames), default=None)
    if best is None or not any(f.user for f in best.frames):
        return None
    return best


def own_frame(thread: Thread) -> Frame | None:
    """The outermost user frame: the test function, or the fixture, that is running."""
    return next((f for f in reversed(thread.frames) if f.user), None)


def render_thread(thread: Thread) -> list[str]:
    """The user's frames, most recent call last as in a Python traceback, then the library
    frames they called into: the outermost (what the user's code called) and the
    innermost (where the rank is now), with a count of those left out between."""
    frames = list(reversed(thread.frames))  # most recent call last
    user = [i for i, f in enumerate(frames) if f.user]
    if not user:
        return [f.as_line() for f in frames[-_LIBRARY_SHOWN:]]
    lines = [frames[i].as_line() for i in user]
    inner = frames[user[-1] + 1 :]
    if len(inner) > _LIBRARY_SHOWN:
        skipped = len(inner) - _LIBRARY_SHOWN
        shown = [f.as_line() for f in inner[: _LIBRARY_SHOWN - 1]]
        shown += [f"  ... ({skipped} more)", inner[-1].as_line()]
    else:
        shown = [f.as_line() for f in inner]
    if shown:
        lines.append("  ... in the library:")
        lines += shown
    hidden = user[-1] + 1 - len(user)  # library frames outside the user's
    if hidden:
        lines.append(f"  ({hidden} frames of pytest, pluggy and this plugin around them left out)")
    return lines


def summarize(dump: str) -> tuple[Frame | None, list[str]]:
    """From one rank's dump: the frame it is in (the test's own, or a fixture's) and the
    lines that show its stack; every thread's frames if none is the user's."""
    threads = parse_dump(dump)
    thread = running_thread(threads)
    if thread is None:
        return None, [line for t in threads for line in render_thread(t)] or ["(no stack)"]
    return own_frame(thread), render_thread(thread)
