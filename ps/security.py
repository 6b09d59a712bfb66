"""Authenticated, encrypted traffic: a job's CURVE keys and the ZeroMQ authenticator that checks them.

With ZeroMQ's CURVE mechanism every connection is encrypted, and a server accepts a client
only if the client proves it holds a secret key whose public half the server allows.

Two key pairs per job, not one. Every process that binds a ROUTER (the coordinator, each
shard) holds the *server* pair; every process dials as a *client* (shards and workers to the
coordinator, workers to the shards, `downpour status`), so every process holds the *client*
pair. One shared pair would authenticate just as well inside a single host, but then any
holder of a worker's credentials could also pose as a shard or as the coordinator. With two
pairs a worker host gets only what a client needs (the client pair and the servers' public
key): a stolen worker credential lets one talk to the job, never impersonate its servers.

A key directory (the launcher makes one in the run directory; multi-node deployments mount it
as a secret) holds ZeroMQ certificate files, readable by `zmq.auth.load_certificate`:

    server.key            the servers' public key        every process (clients verify servers)
    server.key_secret     the servers' key pair   0600   coordinator and shard hosts only
    client.key_secret     the clients' key pair   0600   every process
    clients/client.key    the clients' public key        servers: the keys they admit

Every `*.key` file in `clients/` is admitted, so an operator's own client key can be allowed
by dropping its public certificate there (and restarting the servers).

A CURVE server socket without a running authenticator would encrypt but admit *any* client
key, so `configure_server` also sets ZAP_ENFORCE_DOMAIN: with no authenticator in the
process every connection is refused. Fail closed, never open.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import stat
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

log = logging.getLogger(__name__)

SERVER_PUBLIC = "server.key"
SERVER_SECRET = "server.key_secret"
CLIENT_SECRET = "client.key_secret"
CLIENTS_DIR = "clients"
CLIENT_PUBLIC = f"{CLIENTS_DIR}/client.key"
ZAP_DOMAIN = "downpour"  # the authenticator's "*" only covers sockets with no domain, so name ours
GENERATE_HINT = "`downpour keys DIR` (or `downpour launch` with cluster.curve: true) makes a set"


class KeysError(RuntimeError):
    """A key directory that cannot be used; the message names the file and the fix."""


@dataclasses.dataclass(frozen=True)
class Keys:
    """One job's keys as Z85 bytes. Secrets stay out of `repr`, hence out of logs and tracebacks."""

    directory: pathlib.Path
    server_public: bytes
    client_public: bytes
    client_secret: bytes = dataclasses.field(repr=False)
    server_secret: bytes | None = dataclasses.field(default=None, repr=False)  # None on a client-only host

    @property
    def clients_dir(self) -> pathlib.Path:
        return self.directory / CLIENTS_DIR

    def configure_server(self, sock: zmq.Socket) -> None:
        """Make `sock` a CURVE server of this job; call before `bind`."""
        if self.server_secret is None:
            raise KeysError(f"{self.directory / SERVER_SECRET}: not loaded, so this process cannot serve; "
                            f"load the keys with server=True on a coordinator or shard host")
        sock.curve_secretkey = self.server_secret
        sock.curve_publickey = self.server_public
        sock.curve_server = True
        sock.zap_domain = ZAP_DOMAIN.encode()
        sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)

    def configure_client(self, sock: zmq.Socket) -> None:
        """Make `sock` a CURVE client that talks only to this job's servers; call before `connect`."""
        sock.curve_secretkey = self.client_secret
        sock.curve_publickey = self.client_public
        sock.curve_serverkey = self.server_public


class JobAuthenticator(ThreadAuthenticator):
    """The ZAP handler of one process: admits the job's client keys, and stops when its `with`
    block ends (it must stop before `ctx.term()`, which would otherwise wait for it forever)."""

    def __enter__(self) -> JobAuthenticator:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def generate(key_dir: str | os.PathLike) -> Keys:
    """Make a new key set in `key_dir` (created 0700): the secret files are created 0600, never
    wider, not even for an instant. Refuses to overwrite keys: running nodes hold the old ones."""
    directory = pathlib.Path(key_dir)
    existing = [name for name in (SERVER_PUBLIC, SERVER_SECRET, CLIENT_SECRET, CLIENT_PUBLIC)
                if (directory / name).exists()]
    if existing:
        raise KeysError(f"{directory}: already holds keys ({', '.join(existing)}); load them, or delete them "
                        f"first to make a new set (every node of the job then needs the new one)")
    for path in (directory, directory / CLIENTS_DIR):
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask
    server_public, server_secret = zmq.curve_keypair()
    client_public, client_secret = zmq.curve_keypair()
    _write_certificate(directory / SERVER_SECRET, server_public, server_secret)
    _write_certificate(directory / CLIENT_SECRET, client_public, client_secret)
    _write_certificate(directory / SERVER_PUBLIC, server_public)
    _write_certificate(directory / CLIENT_PUBLIC, client_public)
    log.info("generated the job's CURVE keys in %s", directory)
    return load(directory)


def load(key_dir: str | os.PathLike, *, server: bool = True) -> Keys:
    """Read a key set. `server=False` is for hosts that only dial (workers, `downpour status`):
    they need neither the servers' secret nor the list of admitted clients."""
    directory = pathlib.Path(key_dir)
    server_public, _ = _read_certificate(directory / SERVER_PUBLIC, secret=False)
    client_public, client_secret = _read_certificate(directory / CLIENT_SECRET, secret=True)
    server_secret = None
    if server:
        public, server_secret = _read_certificate(directory / SERVER_SECRET, secret=True)
        if public != server_public:
            raise KeysError(f"{directory / SERVER_SECRET}: its public key differs from the one in "
                            f"{directory / SERVER_PUBLIC}: the two files come from different key sets; "
                            f"copy both from the same one")
        admitted, _ = _read_certificate(directory / CLIENT_PUBLIC, secret=False)
        if admitted != client_public:
            raise KeysError(f"{directory / CLIENT_PUBLIC}: does not admit the key in {directory / CLIENT_SECRET}; "
                            f"copy both from the same key set")
    return Keys(directory, server_public, client_public, client_secret, server_secret)


def start_authenticator(ctx: zmq.Context, keys: Keys) -> JobAuthenticator:
    """Start the ZAP handler of `ctx` that admits only the clients in `keys.clients_dir`.

    Start it before binding a server socket; `stop()` it (or use it as a context manager)
    before `ctx.term()`. One per context: ZeroMQ routes every CURVE handshake of the context
    through it."""
    auth = JobAuthenticator(ctx, log=logging.getLogger(f"{__name__}.zap"))
    auth.start()
    auth.configure_curve(domain=ZAP_DOMAIN, location=str(keys.clients_dir))
    if keys.client_public not in auth.certs.get(ZAP_DOMAIN, {}):
        auth.stop()
        raise KeysError(f"{keys.clients_dir}: holds no certificate with the job's client key; "
                        f"copy {CLIENT_PUBLIC} from the job's key set")
    log.info("CURVE authenticator admitting %d client key(s) from %s",
             len(auth.certs[ZAP_DOMAIN]), keys.clients_dir)
    return auth


# ---- certificate files -----------------------------------------------------------------------

def _write_certificate(path: pathlib.Path, public: bytes, secret: bytes | None = None) -> None:
    """A ZeroMQ certificate (ZPL), as `zmq.auth` reads it; created with its final mode."""
    kind = "secret" if secret else "public"
    lines = [f"#   ZeroMQ CURVE {kind} certificate of a downpour job",
             "#   keep it private: anyone holding it can join the job" if secret else
             "#   safe to share with every node of the job",
             "metadata", "curve", f'    public-key = "{public.decode()}"']
    if secret:
        lines.append(f'    secret-key = "{secret.decode()}"')
    mode = 0o600 if secret else 0o644
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # os.open's mode is filtered by the umask too
        os.write(fd, ("\n".join(lines) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_certificate(path: pathlib.Path, *, secret: bool) -> tuple[bytes, bytes | None]:
    try:
        info = path.stat()
    except FileNotFoundError:
        raise KeysError(f"{path}: missing; copy it from the job's key set, or {GENERATE_HINT}") from None
    except OSError as exc:
        raise KeysError(f"{path}: cannot read it ({exc.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise KeysError(f"{path}: cannot read it (not a regular file); put the key file there")
    if secret and info.st_mode & 0o077:
        raise KeysError(f"{path}: secret key is open to other users (mode {stat.S_IMODE(info.st_mode):04o}); "
                        f"run `chmod 600 {path}` (a Kubernetes secret: mount it with defaultMode 0400)")
    try:
        public, secret_key = zmq.auth.load_certificate(path)
    except ValueError:
        raise KeysError(f"{path}: not a CURVE certificate (no public-key line); copy it again from the "
                        f"job's key set") from None
    except OSError as exc:
        raise KeysError(f"{path}: cannot read it ({exc.strerror or exc}); make it readable by the user "
                        f"running downpour (`chmod 600 {path}`, owned by that user)") from None
    _check_key(path, public, "public-key")
    if not secret:
        return public, None
    if secret_key is None:
        raise KeysError(f"{path}: holds no secret-key line; this is a public certificate, expected the "
                        f"secret one")
    _check_key(path, secret_key, "secret-key")
    if zmq.curve_public(secret_key) != public:
        raise KeysError(f"{path}: its secret-key does not belong to its public-key; copy it again from the "
                        f"job's key set")
    return public, secret_key


def _check_key(path: pathlib.Path, key: bytes, what: str) -> None:
    try:
        valid = len(key) == 40 and len(z85.decode(key)) == 32
    except (ValueError, KeyError, TypeError, IndexError):
        valid = False
    if not valid:
        raise KeysError(f"{path}: {what} is not a 40-character Z85 CURVE key; copy the file again from "
                        f"the job's key set")
