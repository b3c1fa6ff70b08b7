"""A small non-blocking client of the backend server, for the Blender add-on and the tests.

Blender's UI thread must never block, so nothing here waits: ``send_*`` queue a message (zmq sends in its I/O
thread), ``poll_messages()`` returns whatever has arrived (``timeout_ms=0`` by default), and heartbeats are
bookkeeping done inside ``poll_messages``: it pings the server every HEARTBEAT_INTERVAL_S, and
``backend_alive()`` turns false after BACKEND_TIMEOUT_S without any message from it.

pyzmq is imported here only; shared/protocol.py stays importable without it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping

import zmq

from shared.protocol import (
    BACKEND_TIMEOUT_S,
    HEARTBEAT_INTERVAL_S,
    MAX_CLIENT_INBOUND_BYTES,
    Message,
    ProtocolError,
    decode,
    encode,
    error_header,
)


class Client:
    """One DEALER connection to a server. Not thread-safe: use it from one thread (zmq sockets are not)."""

    def __init__(self, endpoint: str, client_id: str | None = None, *, context: zmq.Context | None = None,
                 server_public_key: bytes | None = None, client_keys: tuple[bytes, bytes] | None = None,
                 max_bytes: int = MAX_CLIENT_INBOUND_BYTES) -> None:
        """``client_id`` is a token an earlier ``welcome`` gave (``self.client_id`` after a welcome): presented in
        ``hello`` it reattaches this client to its jobs, also across server restarts. None: the server issues
        one. A token the server did not issue is refused (``unknown_client``); the client then says hello
        without it and gets a new one. For a CURVE server pass its public key and this client's (public,
        secret) pair, e.g. from ``load_curve_keys``: the key then identifies the client."""
        self.endpoint = endpoint
        self.client_id = client_id
        self.max_bytes = max_bytes
        self._ctx = context or zmq.Context.instance()
        self.socket = self._ctx.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)  # closing never waits for unsent messages (Blender quitting)
        if server_public_key is not None:
            if client_keys is None:
                client_keys = zmq.curve_keypair()
            self.socket.curve_serverkey = server_public_key
            self.socket.curve_publickey, self.socket.curve_secretkey = client_keys
        # ZMTP heartbeats are answered by the server's libzmq I/O thread, which needs no Python GIL: they keep
        # telling "alive but busy" (a C extension holding the GIL for a long mesh export starves the server's
        # Python heartbeats) apart from "gone" (the connection drops; see backend_alive).
        self.socket.setsockopt(zmq.HEARTBEAT_IVL, int(HEARTBEAT_INTERVAL_S * 1000))
        self.socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, int(BACKEND_TIMEOUT_S * 1000))
        self._monitor = self.socket.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
        self.transport_up = False
        self.socket.connect(endpoint)
        self._next_id = 0
        now = time.monotonic()
        self.last_received = now  # grace: a fresh client counts the backend alive for BACKEND_TIMEOUT_S
        self.last_sent = 0.0
        self.closed = False

    # --- sending -------------------------------------------------------------------------------------------
    def send(self, kind: str, arrays: Mapping[str, Any] | None = None, /, **fields: Any) -> str:
        """Queue a message (with ``arrays``, name -> numpy array, as array frames); returns its request id (echoed
        by the reply)."""
        self._next_id += 1
        rid = fields.pop("id", None) or f"r{self._next_id}"
        header = {"type": kind, "id": rid, **{k: v for k, v in fields.items() if v is not None}}
        self.socket.send_multipart(encode(header, arrays), flags=zmq.NOBLOCK)
        self.last_sent = time.monotonic()
        return rid

    def send_hello(self, name: str = "client") -> str:
        self._hello_name = name
        return self.send("hello", client=self.client_id, name=name)

    def send_submit(self, prompt: str, settings: Mapping[str, Any] | None = None,
                    stream: Mapping[str, Any] | None = None, reference: Any = None) -> str:
        """Submit a generate job; ``reference`` (uint8 [H, W, 3] RGB, shared/reference_image.py) is the reference
        image of an image-prompt method (method isd)."""
        arrays = {"reference": reference} if reference is not None else None
        return self.send("submit", arrays, prompt=prompt, settings=dict(settings or {}), stream=dict(stream or {}))

    def send_texture(self, prompt: str, vertices: Any, faces: Any, uvs: Any = None,
                     settings: Mapping[str, Any] | None = None, stream: Mapping[str, Any] | None = None) -> str:
        """Submit a texture job for the mesh ``vertices`` float32 [V, 3], ``faces`` int32 [F, 3] and optional
        per-vertex ``uvs`` float32 [V, 2] (shared/texture_mesh.py)."""
        arrays = {"vertices": vertices, "faces": faces, **({"uvs": uvs} if uvs is not None else {})}
        return self.send("submit", arrays, kind="texture", prompt=prompt, settings=dict(settings or {}),
                         stream=dict(stream or {}))

    def send_cancel(self, job: str) -> str:
        return self.send("cancel", job=job)

    def send_refine(self, job: str, prompt: str | None = None, settings: Mapping[str, Any] | None = None,
                    stream: Mapping[str, Any] | None = None) -> str:
        return self.send("refine", job=job, prompt=prompt, settings=dict(settings or {}), stream=dict(stream or {}))

    def send_list(self) -> str:
        return self.send("list")

    def send_fetch(self, job: str) -> str:
        return self.send("fetch", job=job)

    def send_ping(self) -> str:
        return self.send("ping", t=time.time())

    def send_shutdown(self) -> str:
        return self.send("shutdown")

    # --- receiving -----------------------------------------------------------------------------------------
    def poll_messages(self, timeout_ms: int = 0, limit: int = 1000) -> list[Message]:
        """Messages that have arrived (waiting at most ``timeout_ms`` for the first), heartbeats included.

        A message that cannot be decoded comes back as a local ``error`` Message with ``"local": true``.
        Also sends a ping when one is due, so calling this regularly is all the heartbeat a client needs.
        """
        out: list[Message] = []
        if self.closed:
            return out
        self._read_monitor()
        self.heartbeat()
        if timeout_ms and not self.socket.poll(timeout_ms, zmq.POLLIN):
            return out
        while len(out) < limit:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                break
            self.last_received = time.monotonic()
            try:
                message = decode(frames, self.max_bytes)
                self._note_identity(message)
                out.append(message)
            except ProtocolError as exc:
                head = error_header(exc.code, f"undecodable message from the server: {exc.message}")
                head["local"] = True
                out.append(Message(head))
        return out

    def _note_identity(self, m: Message) -> None:
        """Keep the token a welcome issued; drop a refused one and ask for a fresh one."""
        if m.type == "welcome" and m.get("client"):
            self.client_id = m["client"]
        elif m.type == "error" and m.get("code") == "unknown_client" and self.client_id is not None:
            self.client_id = None
            self.send_hello(getattr(self, "_hello_name", "client"))

    def heartbeat(self, now: float | None = None) -> None:
        """Ping the server when nothing was sent for HEARTBEAT_INTERVAL_S (it then answers pong)."""
        now = time.monotonic() if now is None else now
        if now - self.last_sent >= HEARTBEAT_INTERVAL_S:
            try:
                self.send_ping()
            except zmq.Again:  # no connection yet and the queue is full: the timeout will tell
                pass

    def _read_monitor(self) -> None:
        from zmq.utils.monitor import recv_monitor_message

        while self._monitor.poll(0):
            event = recv_monitor_message(self._monitor)["event"]
            self.transport_up = event == zmq.EVENT_HANDSHAKE_SUCCEEDED

    def backend_alive(self, now: float | None = None) -> bool:
        """Whether the backend is there: a message within BACKEND_TIMEOUT_S (it heartbeats every second), or,
        after that, a connection still up with ZMTP heartbeats answered (the server is busy in native code).

        A killed server's connection drops at once, so this turns false BACKEND_TIMEOUT_S after its last
        message; an unreachable host (no FIN) fails its ZMTP heartbeats BACKEND_TIMEOUT_S after the last one
        answered, so at most about HEARTBEAT_INTERVAL_S later than that.
        """
        now = time.monotonic() if now is None else now
        if not self.closed:
            self._read_monitor()
        return now - self.last_received < BACKEND_TIMEOUT_S or (self.transport_up and not self.closed)

    def close(self) -> None:
        if not self.closed:
            self.socket.disable_monitor()
            self._monitor.close(linger=0)
            self.socket.close(linger=0)
            self.closed = True

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def load_curve_keys(path: str | Path) -> tuple[bytes, bytes | None]:
    """(public, secret) from a zmq.auth certificate file (``secret`` is None for a .key public file)."""
    import zmq.auth

    return zmq.auth.load_certificate(str(path))


__all__ = ["Client", "load_curve_keys"]
