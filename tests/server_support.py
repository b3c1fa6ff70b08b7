"""Helpers for the server tests: a real `python -m backend serve` subprocess and waiting on real zmq clients."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import time
import weakref
from pathlib import Path
from typing import Any, Callable, Iterable

from shared import protocol as P
from shared.client import Client
from shared.protocol import Message
from shared.settings import SCHEMA

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


# --- malformed messages: seeded mutations of valid ones ---------------------------------------------------------

# Valid client messages to mutate. No "shutdown": a valid one would stop the server under test.
FUZZ_BASES: tuple[dict[str, Any], ...] = (
    {"type": "hello", "name": "fuzz"},
    {"type": "submit", "prompt": "a red cube", "settings": TINY, "stream": {"progress_every": 1000}},
    {"type": "cancel", "job": "20260101-000000-0123abcd"},
    {"type": "refine", "job": "20260101-000000-0123abcd", "prompt": "a blue cube", "settings": {"steps": 4}},
    {"type": "list"},
    {"type": "fetch", "job": "20260101-000000-0123abcd"},
    {"type": "ping", "t": 1.5},
)
_FUZZ_FIELDS = ("v", "type", "id", "arrays", "job", "prompt", "settings", "stream", "t", "client", "name", "x")
_FUZZ_TYPES = ("hello", "submit", "cancel", "refine", "list", "fetch", "ping", "welcome", "pong", "error", "",
               "SUBMIT")
_FUZZ_DTYPES = ("uint8", "int32", "uint32", "float32", "float16", "float64", "int64", "object", "<f4", "", 4, None,
                ["uint8"])
_FUZZ_DIMS = (0, 1, 2, 3, 7, 64, 4096, -1, -(2**63), 2**31, 2**62, 2**63, 2**64, 10**30, 10**300, 1.5, 1e30,
              float("nan"), "3", True, False, None, [2], {})


def fuzz_value(rng: random.Random, depth: int = 0) -> Any:
    """A random JSON-able value, biased to the edges: huge and negative numbers, empty and odd strings."""
    kind = rng.randrange(10 if depth < 3 else 7)
    if kind == 0:
        return rng.choice([0, 1, -1, 2**31, 2**63, -(2**63), 10**30, 10**400, 7])
    if kind == 1:
        return rng.choice([0.0, -0.0, 1.5, -1e308, 1e308, 5e-324, float("nan"), float("inf")])
    if kind == 2:
        return rng.choice(["", "x", "a red cube", "../../etc", "\u00e9\u4e2d", "a" * 300, "0", "true", "\x00"])
    if kind == 3:
        return rng.choice([True, False])
    if kind == 4:
        return None
    if kind == 5:
        return "".join(rng.choice("ab_-9 /.%\\\"") for _ in range(rng.randint(0, 70)))
    if kind == 6:
        return rng.randint(-10, 10**6)
    if kind in (7, 8):
        return [fuzz_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {rng.choice(["steps", "method", "quality", "seed", "lr", "k", ""]): fuzz_value(rng, depth + 1)
            for _ in range(rng.randint(0, 4))}


def _fuzz_arrays(rng: random.Random) -> tuple[Any, list[bytes]]:
    """Array descriptors and frames: odd shapes, dtypes and byte counts, sometimes exactly matching."""
    descriptors: list[Any] = []
    frames: list[bytes] = []
    for _ in range(rng.choice([0, 1, 1, 1, 2, 3, P.MAX_ARRAYS + 1])):
        if rng.random() < 0.5:  # a plausible shape, with a zero dimension half the time
            shape: Any = [rng.choice([0, 1, 2, 3, 5]) for _ in range(rng.randint(0, 4))]
            if shape and rng.random() < 0.5:
                shape[rng.randrange(len(shape))] = rng.choice(_FUZZ_DIMS)
        else:
            shape = [rng.choice(_FUZZ_DIMS) for _ in range(rng.randint(0, 6))]
        if rng.random() < 0.05:
            shape = rng.choice(["[3]", 3, None, {"0": 3}])
        # Mostly a good name and dtype, so that the shape and the frame are what is judged.
        d: Any = {"name": rng.choice(["a", "b", "vertices"]) if rng.random() < 0.8 else rng.choice(["", "x" * 65, 5]),
                  "dtype": rng.choice(_FUZZ_DTYPES[:5] if rng.random() < 0.8 else _FUZZ_DTYPES), "shape": shape}
        if rng.random() < 0.05:
            d = rng.choice([{k: v for k, v in d.items() if k != "shape"}, {**d, "extra": 1}, "a", [d]])
        descriptors.append(d)
        dtype = d.get("dtype") if isinstance(d, dict) else None
        size = P._ITEMSIZE.get(dtype, 1) if isinstance(dtype, str) else 1
        exact = rng.randint(0, 64)  # where the shape gives no sensible byte count
        if isinstance(shape, list) and all(type(n) is int and n >= 0 for n in shape):
            # A zero dimension makes the exact count 0 however large the others: the case numpy cannot build.
            exact = size * math.prod(shape) if size * math.prod(shape) <= 4096 else exact
        n = rng.choice([exact, exact, exact, max(0, exact - 1), exact + 1, 0, rng.randint(0, 64)])
        frames.append(bytes(rng.getrandbits(8) for _ in range(min(n, 16))) + b"\0" * max(0, n - 16))
    if rng.random() < 0.1:  # frame count off by one either way
        frames = frames[:-1] if frames and rng.random() < 0.5 else frames + [b"\0" * rng.randint(0, 8)]
    return descriptors, frames


def mutated_messages(rng: random.Random, n: int) -> list[list[bytes]]:
    """``n`` messages, each a valid client message with one to three mutations: fields set to random values,
    removed or added; settings and stream options scrambled; array frames with odd shapes, dtypes and byte
    counts; the header truncated, or replaced by other JSON or bytes. Some stay valid (a ping with a new id)."""
    out = []
    for _ in range(n):
        header = json.loads(json.dumps(rng.choice(FUZZ_BASES)))
        header["v"], header["id"] = 1, f"fz{rng.randrange(10**6)}"
        frames: list[bytes] = []
        raw: bytes | None = None
        for _ in range(rng.randint(1, 3)):
            what = rng.choices(range(9), weights=(6, 2, 2, 4, 4, 4, 1, 1, 1))[0]
            if what == 0:
                header[rng.choice(_FUZZ_FIELDS)] = fuzz_value(rng)
            elif what == 1 and header:
                del header[rng.choice(sorted(header))]
            elif what == 2:
                header["type"] = rng.choice(_FUZZ_TYPES)
            elif what == 3:
                holder = rng.choice(["settings", "stream"])
                target = header.setdefault(holder, {})
                if isinstance(target, dict):
                    key = rng.choice([*SCHEMA, "progress_every", "preview_size", "mesh_every", "nope"])
                    target[key] = fuzz_value(rng)
            elif what in (4, 5):
                header["arrays"], frames = _fuzz_arrays(rng)
            elif what == 6:
                raw = json.dumps(header).encode()[: rng.randint(0, 40)]
            elif what == 7:
                raw = json.dumps(rng.choice([[], [header], 3, "x", None, True])).encode()
            else:
                raw = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 40)))
        if raw is None:
            raw = json.dumps(header).encode()  # NaN and Infinity stay in: the protocol refuses them
        out.append([raw, *frames])
    return out
