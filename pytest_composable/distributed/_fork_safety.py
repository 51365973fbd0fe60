"""Whether the main process may be forked into a warm-start template.

Forking is unsafe while the process runs other threads: Python threads, or
native ones started after torch was imported, such as an OpenMP pool (a
forked child's OpenMP hangs), or once it has initialised an accelerator.
Importing torch itself starts threads that survive a fork harmlessly, so the
plugin counts the threads right after torch's import (:func:`watch_torch_import`,
installed at configure) and :func:`unsafe_reason` compares against that count.
Small and torch-free: every plain session imports it at configure.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from types import ModuleType

from .._runtime import initialised

__all__ = ["note_threads", "unsafe_reason", "watch_torch_import"]

_tasks_after_torch: int | None = None


def _tasks() -> int:
    """Threads of this process, native ones included (Linux)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:  # pragma: no cover - no procfs
        return threading.active_count()


def note_threads() -> None:
    """Remember how many threads this process had right after torch was imported.

    Importing torch (and numpy's BLAS) starts threads that survive a fork
    harmlessly; threads started later, such as an OpenMP pool spun up by a
    parallel tensor operation, do not. The plugin calls this when torch's import
    completes (or at configure time, if torch came first); cheap (one ``listdir``)."""
    global _tasks_after_torch
    if _tasks_after_torch is None and "torch" in sys.modules:
        _tasks_after_torch = _tasks()


def unsafe_reason() -> str | None:
    """Why this process must not be forked into a template now, or ``None`` if it may."""
    if not sys.platform.startswith("linux") or not hasattr(socket, "send_fds"):
        return (
            f"warm start needs Linux (fork, PR_SET_PDEATHSIG, SCM_RIGHTS); this is {sys.platform}"
        )
    threads = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    if threads:
        return f"the main process runs other Python threads ({', '.join(sorted(threads))})"
    torch = sys.modules.get("torch")
    if torch is not None:
        for name in ("cuda", "xpu", "mtia", "mps"):
            if initialised(name) is not None:
                return f"torch.{name} is already initialised in the main process"
        note_threads()
        started = 0 if _tasks_after_torch is None else _tasks() - _tasks_after_torch
        if started > 0:
            return (
                f"the main process started {started} native thread(s) "
                "after importing torch (an OpenMP pool? a forked child's would hang)"
            )
    monitoring = getattr(sys, "monitoring", None)  # Python 3.12+
    if monitoring is not None and any(monitoring.get_tool(i) for i in range(6)):
        return "a sys.monitoring tool (coverage, a debugger) is active in the main process"
    return None


class _TorchImportWatch(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Warm start must know which threads importing torch started (harmless to fork) and
    which came later (an OpenMP pool is not): this finder, first on ``sys.meta_path`` until
    torch is imported, lets torch's own loader run and then has the threads counted."""

    def __init__(self) -> None:
        self.loader: importlib.abc.Loader | None = None

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "torch":
            return None
        self.remove()
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        self.loader, spec.loader = spec.loader, self
        return spec

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        assert self.loader is not None
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        assert self.loader is not None
        assert module.__spec__ is not None
        # torch sees its own loader (importlib.resources asks it for files).
        module.__loader__ = module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        note_threads()

    def remove(self) -> None:
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)


def watch_torch_import() -> Callable[[], None]:
    """Count the threads once torch is imported (now, if it is already); returns what
    removes the watch (the caller runs it at unconfigure)."""
    if "torch" in sys.modules:
        note_threads()
        return lambda: None
    watch = _TorchImportWatch()
    sys.meta_path.insert(0, watch)
    return watch.remove
