"""Who may talk to the server: loopback-only by default, CURVE (encryption + client keys) for anything else.

A job runs arbitrary prompts on the GPU and results can be fetched by any connected client, so an
unauthenticated server reachable from the network would let anyone there use the GPU and read the artist's
results. Hence a non-loopback bind needs CURVE keys; see docs/PROTOCOL.md "Security".
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


class BindRefused(ValueError):
    """The bind address is not allowed with the given security settings; the text says why and how to fix it."""


def is_loopback(endpoint: str) -> bool:
    """True for ipc://, inproc:// and tcp:// on 127.0.0.0/8, ::1 or localhost; False for *, 0.0.0.0, names."""
    scheme, sep, rest = endpoint.partition("://")
    if not sep:
        raise BindRefused(f"bind address {endpoint!r} has no scheme; expected tcp://HOST:PORT, ipc://PATH or inproc://NAME")
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp":
        raise BindRefused(f"bind address {endpoint!r}: scheme {scheme!r} is not supported; use tcp, ipc or inproc")
    host, _, port = rest.rpartition(":")
    if not host or not port:
        raise BindRefused(f"bind address {endpoint!r} must be tcp://HOST:PORT")
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "*", an interface name or a host name: may be reachable from the network


@dataclass(frozen=True)
class CurveConfig:
    secret_key_file: Path
    client_keys_dir: Path


def check_bind(endpoint: str, curve: CurveConfig | None) -> None:
    """Raise BindRefused for a non-loopback bind without CURVE keys (the message says why and how to enable)."""
    if is_loopback(endpoint) or curve is not None:
        return
    raise BindRefused(
        f"refusing to bind {endpoint}: it is not a loopback address and no CURVE keys are configured, so anyone "
        "who can reach this machine over the network could run jobs on its GPU and read every result. "
        "Bind tcp://127.0.0.1:PORT (the default) for a local Blender, or enable CURVE encryption and client "
        "authentication: run `python -m backend keys DIR`, then serve with "
        "--curve-secret-key DIR/server.key_secret --curve-client-keys DIR/authorized_clients, and give clients "
        "DIR/server.key and their own client.key_secret (docs/PROTOCOL.md, Security)."
    )


def apply_curve(ctx: zmq.Context, socket: zmq.Socket, curve: CurveConfig) -> object:
    """Make ``socket`` a CURVE server that only admits the public keys in ``curve.client_keys_dir``.

    Returns the authenticator thread; keep a reference and call ``.stop()`` on shutdown.
    """
    from zmq.auth.thread import ThreadAuthenticator

    public, secret = zmq.auth.load_certificate(str(curve.secret_key_file))
    if secret is None:
        raise BindRefused(f"{curve.secret_key_file} holds no secret key (pass the .key_secret file)")
    if not curve.client_keys_dir.is_dir():
        raise BindRefused(f"--curve-client-keys {curve.client_keys_dir} is not a folder of client public keys")
    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve(domain="*", location=str(curve.client_keys_dir))
    socket.curve_secretkey = secret
    socket.curve_publickey = public
    socket.curve_server = True
    return auth


def make_keys(folder: Path) -> dict[str, Path]:
    """Create a server and a client key pair in ``folder`` and authorise the client; returns the paths.
    Secret key files are 0600 and ``folder`` 0700 from the moment they exist (a umask, not a later chmod)."""
    old = os.umask(0o077)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        server_public, server_secret = zmq.auth.create_certificates(str(folder), "server")
        client_public, client_secret = zmq.auth.create_certificates(str(folder), "client")
    finally:
        os.umask(old)
    for secret in (server_secret, client_secret):
        os.chmod(secret, 0o600)  # a file that existed before keeps no wider mode
    for public in (server_public, client_public):
        os.chmod(public, 0o644)  # public keys are meant to be handed out
    authorized = folder / "authorized_clients"
    authorized.mkdir(exist_ok=True)
    shutil.copy(client_public, authorized / Path(client_public).name)
    return {"server_public": Path(server_public), "server_secret": Path(server_secret),
            "client_public": Path(client_public), "client_secret": Path(client_secret),
            "authorized_clients": authorized}


class Identities:
    """Client tokens: issued by the server in ``welcome``, presented in ``hello`` to reattach.

    A token is 22 random characters followed by 22 characters of an HMAC of them under this results folder's
    secret (``.server_secret``, 0600), so the server recognises its own tokens after a restart without storing
    any, and a client cannot choose or guess one. Jobs are owned by a hash of the token: job.json never holds
    a token, so reading the results folder gives no way to act as a client.
    """

    RANDOM_CHARS = 22

    def __init__(self, secret_file: Path) -> None:
        from backend.files import write_bytes

        if not secret_file.is_file():
            write_bytes(secret_file, secrets.token_bytes(32), mode=0o600)
        self._key = secret_file.read_bytes()

    def _mac(self, random_part: str) -> str:
        digest = hmac.new(self._key, random_part.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")[: self.RANDOM_CHARS]

    def issue(self) -> str:
        random_part = secrets.token_urlsafe(16)[: self.RANDOM_CHARS]
        return random_part + self._mac(random_part)

    def verify(self, token: str) -> bool:
        n = self.RANDOM_CHARS
        return len(token) == 2 * n and hmac.compare_digest(token[n:], self._mac(token[:n]))

    @staticmethod
    def owner(token: str) -> str:
        return "t-" + hashlib.sha256(token.encode()).hexdigest()[:32]

    @staticmethod
    def key_owner(curve_public_key: str) -> str:
        """The owner of a CURVE client's jobs: its (authorised) public key, hashed like a token."""
        return "k-" + hashlib.sha256(curve_public_key.encode()).hexdigest()[:32]

    @staticmethod
    def anonymous() -> str:
        """The owner of a connection that never said hello: random and never revealed, so only that connection
        reaches its jobs."""
        return "anon-" + secrets.token_hex(16)


__all__ = ["BindRefused", "Identities", "CurveConfig", "is_loopback", "check_bind", "apply_curve", "make_keys"]
