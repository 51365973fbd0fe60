"""The one protocol between the main pytest process and its ranks (torch-free).

Everything that crosses the boundary is defined here, as typed values:

* :class:`RankSpec` travels once, main -> rank, in the environment variable
  :data:`RANK_ENV` (JSON): how the rank joins its world and reaches the main
  process.
* Messages travel over one ``AF_UNIX`` socket pair per rank (no path, no port), each a
  length-prefixed pickle of one of the dataclasses below, written and read
  only by :class:`Channel`. A value that is not one of them is a protocol
  error, never guessed at.

Main -> rank: :class:`Run`, :class:`Check`, :class:`Stop`.
Rank -> main: :class:`Joining`, :class:`Ready`, :class:`Failing`, :class:`Done`, :class:`Missing`,
:class:`Checked`, :class:`Crash`.

With warm start (:mod:`._warm`) the main process also talks to its *template*
process over one more socket pair: main -> template :class:`Fork` (the rank's
control socket and log file travel with it as ``SCM_RIGHTS``, see
:meth:`Channel.send`); template -> main :class:`Forked` and :class:`Exited`.
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import struct
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ._constants import RANK_ENV

__all__ = [
    "Channel",
    "Check",
    "Checked",
    "Crash",
    "Done",
    "Exited",
    "Failing",
    "Fork",
    "Forked",
    "Joining",
    "Memory",
    "Message",
    "Missing",
    "ProtocolError",
    "RankSpec",
    "Ready",
    "Run",
    "Stop",
    "spec_from_env",
]


@dataclass(frozen=True)
class RankSpec:
    """Everything a rank process needs to join its world and reach the main process."""

    control_fd: int  # this rank's end of a socket pair with the main process (inherited)
    store: str  # FileStore path
    rank: int
    world_size: int
    device_type: str
    backend: str
    join_timeout: float  # for the rendezvous; each Run then sets the test's own timeout
    parent_pid: int
    stack_file: str
    # Where the group cannot be retimed once made (torch 2.6): the timeout to make it
    # with, after the ranks met in the store within join_timeout.
    pg_timeout: float | None = None
    # The intra-op thread count the plugin chose for the rank (None: the user's choice,
    # OMP_NUM_THREADS, stands); set before the rank's session configures, so that a
    # conftest's own torch.set_num_threads still wins.
    threads: int | None = None
    # How far the rank's memory may grow since it joined (bytes; None: no limit). Past it,
    # the rank collects garbage and hands freed heap back before it measures for Done.
    memory_limit: int | None = None

    def to_env(self) -> str:
        return json.dumps(asdict(self))


def spec_from_env() -> RankSpec | None:
    """This process's :class:`RankSpec` (removed from the environment so subprocesses
    of the tests do not inherit it), or ``None`` outside a rank."""
    raw = os.environ.pop(RANK_ENV, None)
    return None if raw is None else RankSpec(**json.loads(raw))


# Main -> rank.


@dataclass(frozen=True)
class Run:
    """Run ``nodeid`` with pytest's protocol; ``next_id`` is the pool's next test (or none),
    so fixtures are torn down as they would be in one session. ``pg_timeout``: the process
    group's timeout for this test (seconds)."""

    nodeid: str
    next_id: str | None
    pg_timeout: float


@dataclass(frozen=True)
class Check:
    """Meet the other ranks at a barrier within ``timeout`` seconds."""

    timeout: float


@dataclass(frozen=True)
class Stop:
    """Tear down what is still set up (session fixtures), reply, leave the world and exit.
    The reply is :class:`Done` with no reports, or :class:`Crash` (phase ``"teardown"``)."""


# Rank -> main.


@dataclass(frozen=True)
class Memory:
    """A rank's memory, in bytes: its resident set size, and the memory allocated on its
    accelerator (0 without one)."""

    rss: int
    accelerator: int = 0


@dataclass(frozen=True)
class Joining:
    """The rank has collected its tests and is entering the rendezvous."""

    rank: int


@dataclass(frozen=True)
class Ready:
    """The rank joined the world. ``memory``: its memory then, which later growth is measured
    from; ``threads``: its intra-op thread count then (torch's, after the session configured)."""

    rank: int
    pid: int
    memory: Memory = Memory(0)
    threads: int = 0


@dataclass(frozen=True)
class Failing:
    """A phase of the running test failed on this rank: sent at once, before the rest of
    the test's protocol, so the main process need not wait for ranks that the failure
    left waiting in a collective. ``report``: that phase's serialized report.
    ``consequence``: the error is of the kind another rank's failure causes (a
    collective's own error: a timeout, an abort, a closed connection), so it is the
    test's root cause only if no rank failed on its own."""

    rank: int
    report: dict[str, Any]
    consequence: bool


@dataclass(frozen=True)
class Done:
    """The serialized reports of one :class:`Run` (none after a :class:`Stop`); ``intact``:
    the default process group is still the one the rank joined (a test may destroy it);
    ``memory``: the rank's memory once the test was over and its state restored (``None``
    after a :class:`Stop`)."""

    reports: list[dict[str, Any]]
    intact: bool
    memory: Memory | None = None


@dataclass(frozen=True)
class Missing:
    """The rank did not collect the test it was asked to run."""

    nodeid: str


@dataclass(frozen=True)
class Checked:
    ok: bool


@dataclass(frozen=True)
class Crash:
    """The rank is about to exit: ``traceback`` says why. ``phase`` is where it happened:
    ``"join"`` (joining the world), ``"test"`` (inside a test's protocol), ``"clean"``
    (putting back the process state after a test whose :class:`Done` was sent; told as
    the answer to the main process's next message, whichever it is), ``"teardown"``
    (ending the session's fixtures at :class:`Stop`) or ``"serve"``."""

    traceback: str
    phase: str


# Main -> template (warm start).


@dataclass(frozen=True)
class Fork:
    """Fork rank ``spec.rank`` and make it a rank session: ``python -m pytest *args`` in
    ``cwd`` with exactly ``env`` as its environment (plus :data:`RANK_ENV`: ``spec`` with the
    received control socket's descriptor). Two descriptors travel with this message: the
    rank's end of its control socket pair, then its log file."""

    spec: RankSpec
    env: dict[str, str]
    args: list[str]
    cwd: str


# Template -> main.


@dataclass(frozen=True)
class Forked:
    """The template forked rank ``rank`` as process ``pid`` (``-1``: fork failed)."""

    rank: int
    pid: int


@dataclass(frozen=True)
class Exited:
    """A process the template forked has ended; ``code`` as :attr:`subprocess.Popen.returncode`
    (negative: killed by that signal)."""

    pid: int
    code: int


Message = (
    Run
    | Check
    | Stop
    | Joining
    | Ready
    | Failing
    | Done
    | Missing
    | Checked
    | Crash
    | Fork
    | Forked
    | Exited
)
_MESSAGES = (
    Run,
    Check,
    Stop,
    Joining,
    Ready,
    Failing,
    Done,
    Missing,
    Checked,
    Crash,
    Fork,
    Forked,
    Exited,
)


class ProtocolError(Exception):
    """The peer sent something that is not a message of this protocol."""


_HEADER = struct.Struct("!Q")


class Channel:
    """One end of the control connection; the only code that encodes or decodes messages."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, message: Message, fds: Sequence[int] = ()) -> bool:
        """Send ``message``; ``False`` if the peer has gone (its end is closed).

        ``fds``: file descriptors that travel with the message (``SCM_RIGHTS``, on the
        header's bytes); the peer must read it with :meth:`recv_with_fds`."""
        payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        header = _HEADER.pack(len(payload))
        try:
            if fds:
                # The header goes alone with the descriptors, so the reader's first
                # recvmsg, sized to the header, takes them and nothing of the payload.
                sent = socket.send_fds(self.sock, [header], list(fds))
                self.sock.sendall(header[sent:] + payload)
            else:
                self.sock.sendall(header + payload)
        except OSError:  # BrokenPipeError, ConnectionResetError: the peer died
            return False
        return True

    def _exactly(self, size: int) -> bytes | None:
        chunks = []
        while size:
            chunk = self.sock.recv(min(size, 1 << 20))
            if not chunk:
                return None
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)

    def recv(self) -> Message | None:
        """The next message, or ``None`` when the peer has gone (EOF or reset)."""
        try:
            header = self._exactly(_HEADER.size)
        except OSError:
            return None
        return self._message(header)

    def recv_with_fds(self, maxfds: int) -> tuple[Message | None, list[int]]:
        """The next message and the descriptors (at most ``maxfds``) that came with it;
        ``(None, [])`` when the peer has gone. The caller owns the descriptors."""
        try:
            first, fds, _, _ = socket.recv_fds(self.sock, _HEADER.size, maxfds)
            if not first:
                for fd in fds:
                    os.close(fd)
                return None, []
            rest = self._exactly(_HEADER.size - len(first))
        except OSError:
            return None, []
        if rest is None:
            for fd in fds:
                os.close(fd)
            return None, []
        return self._message(first + rest), fds

    def _message(self, header: bytes | None) -> Message | None:
        if header is None:
            return None
        try:
            payload = self._exactly(_HEADER.unpack(header)[0])
        except OSError:
            return None
        if payload is None:
            return None
        message = pickle.loads(payload)
        if not isinstance(message, _MESSAGES):
            raise ProtocolError(f"not a composable message: {type(message).__name__}")
        return message

    def close(self) -> None:
        self.sock.close()
