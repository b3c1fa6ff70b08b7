"""Helpers for the server tests: a real `python -m backend serve` subprocess and waiting on real zmq clients."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import weakref
from pathlib import Path
from typing import Any, Callable, Iterable

from shared.client import Client
from shared.protocol import Message

ROOT = Path(__file__).resolve().parents[1]

# A job that takes seconds on a CPU: few steps, 100 Gaussians, tiny mesh and texture.
TINY: dict[str, Any] = {"quality": "draft", "steps": 8, "representation": "gaussians", "gaussian_points": 100,
                        "camera_bank_size": 4, "mesh_resolution": 32, "texture_size": 64,
                        "procedural_resolution": 32, "preview_every": 2}
# A job long enough to cancel, refine or kill in the middle (each step ~0.1 s on a CPU).
LONG: dict[str, Any] = {**TINY, "steps": 2000, "preview_every": 0}
STREAM: dict[str, int] = {"progress_every": 1, "preview_size": 32, "preview_views": 2, "mesh_every": 4,
                          "mesh_resolution": 32, "mesh_texture_size": 64}
QUIET_STREAM: dict[str, int] = {"progress_every": 1, "preview_size": 16, "preview_views": 1}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`python -m backend serve` in a subprocess; its log goes to a file for the assertion messages."""

    def __init__(self, results: Path, port: int | None = None, extra: Iterable[str] = ()) -> None:
        self.results = Path(results)
        self.port = port or free_port()
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        self.log_path = self.results.parent / f"server-{self.port}-{time.monotonic_ns()}.log"
        self.extra = list(extra)
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90.0, env: dict[str, str] | None = None) -> "ServerProcess":
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", **(env or {}))
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "backend", "serve", "--bind", self.endpoint, "--results", str(self.results),
             "--device", "cpu", *self.extra], cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "ready: serving" in self.log():
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.1)
        raise RuntimeError(f"server not ready after {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if getattr(self, "_log", None):
            self._log.close()

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


# Tokens the servers issued, by (results folder, a name the test gives its client): a test names a client
# ("streamer") and gets the same identity back later, also from a restarted server on the same folder.
_TOKENS: dict[tuple[str, str], str] = {}


def client(server: ServerProcess, name: str | None = None, hello: bool = True) -> Client:
    key = (str(server.results), name or "")
    c = Client(server.endpoint, _TOKENS.get(key) if name else None)
    if hello:
        c.send_hello(name="pytest")
        welcome = wait_for(c, lambda m: m.type == "welcome", 10)
        if name:
            _TOKENS[key] = welcome["client"]
    return c


def owner_of(server: ServerProcess, name: str) -> str:
    """The owner job.json records for the client the tests call ``name``: a hash of its token, never the token."""
    from backend.server.security import Identities

    return Identities.owner(_TOKENS[(str(server.results), name)])


class Timeout(AssertionError):
    pass


# Messages a client has received but no wait_for has consumed yet: poll_messages returns a batch, and the
# messages after the match in that batch (say a `cancelled` right behind an `accepted`) belong to later waits.
_BACKLOG: "weakref.WeakKeyDictionary[Client, list[Message]]" = weakref.WeakKeyDictionary()


def drain(c: Client, timeout_ms: int = 0) -> list[Message]:
    """Everything received and not yet consumed, then whatever arrives within ``timeout_ms``."""
    backlog = _BACKLOG.setdefault(c, [])
    out, backlog[:] = list(backlog), []
    return out + c.poll_messages(timeout_ms)


def wait_for(c: Client, predicate: Callable[[Message], bool], timeout: float,
             seen: list[Message] | None = None) -> Message:
    """The first message matching ``predicate``; every message received meanwhile is appended to ``seen``
    (heartbeats and pongs left out). Messages after the match stay for the next call."""
    deadline = time.monotonic() + timeout
    backlog = _BACKLOG.setdefault(c, [])
    while True:
        while backlog:
            m = backlog.pop(0)
            if m.type not in ("heartbeat", "pong") and seen is not None:
                seen.append(m)
            if predicate(m):
                return m
        if time.monotonic() >= deadline:
            break
        backlog.extend(c.poll_messages(50))
    raise Timeout(f"no matching message within {timeout} s; got {[_brief(m) for m in (seen or [])][-20:]}")


def run_to_end(c: Client, job: str, timeout: float = 120.0) -> list[Message]:
    """All messages of ``job`` until it finishes, is cancelled or fails."""
    seen: list[Message] = []
    wait_for(c, lambda m: m.job == job and (m.type in ("finished", "cancelled")
                                            or (m.type == "error" and m.get("fatal"))), timeout, seen)
    return seen


def submit(c: Client, prompt: str = "a red cube", settings: dict | None = None,
           stream: dict | None = None) -> Message:
    rid = c.send_submit(prompt, settings or TINY, stream or QUIET_STREAM)
    return wait_for(c, lambda m: m.get("id") == rid, 10)


def _brief(m: Message) -> str:
    return f"{m.type}({', '.join(f'{k}={v}' for k, v in m.header.items() if k in ('job', 'step', 'code', 'message'))})"
