"""CURVE keys and authentication: only a job's own clients are heard, and nobody can read the traffic."""
import selectors
import socket
import stat
import threading
import time

import numpy as np
import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from downpour.ps import protocol as P
from downpour.ps import security
from downpour.ps.wire import decode, encode, recv, reply

SECRET_JOB = "job-with-a-recognisable-id-7f3a"
SECRET_GRADIENT = np.full(64, 1234.5678, np.float32)  # a byte pattern that stands out in a capture


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


# ---- key files -------------------------------------------------------------------------------

def test_generate_writes_secrets_0600_in_a_0700_directory_and_load_reads_back_the_same_keys(tmp_path):
    key_dir = tmp_path / "keys"
    keys = security.generate(key_dir)
    assert mode(key_dir) == 0o700 and mode(key_dir / "clients") == 0o700
    assert mode(key_dir / security.SERVER_SECRET) == 0o600
    assert mode(key_dir / security.CLIENT_SECRET) == 0o600
    assert security.load(key_dir) == keys
    assert keys.server_public != keys.client_public
    assert zmq.curve_public(keys.server_secret) == keys.server_public
    assert zmq.curve_public(keys.client_secret) == keys.client_public


def test_secrets_never_appear_in_the_keys_repr(tmp_path):
    keys = security.generate(tmp_path)
    text = repr(keys)
    assert keys.server_secret.decode() not in text and keys.client_secret.decode() not in text
    assert keys.server_public.decode() in text


def test_public_certificates_hold_no_secret(tmp_path):
    keys = security.generate(tmp_path)
    for name in (security.SERVER_PUBLIC, security.CLIENT_PUBLIC):
        text = (tmp_path / name).read_text()
        assert "secret-key" not in text
        assert keys.server_secret.decode() not in text and keys.client_secret.decode() not in text


def test_generate_refuses_to_overwrite_an_existing_key_set(tmp_path):
    keys = security.generate(tmp_path)
    with pytest.raises(security.KeysError, match="already holds keys"):
        security.generate(tmp_path)
    assert security.load(tmp_path) == keys


def test_a_missing_secret_is_named_with_how_to_get_one(tmp_path):
    security.generate(tmp_path)
    (tmp_path / security.CLIENT_SECRET).unlink()
    with pytest.raises(security.KeysError, match=f"{security.CLIENT_SECRET}: missing; copy it .*downpour keys"):
        security.load(tmp_path)


@pytest.mark.parametrize("loose_mode", [0o644, 0o640, 0o604])
def test_a_secret_readable_by_other_users_is_refused_with_the_chmod_that_fixes_it(tmp_path, loose_mode):
    security.generate(tmp_path)
    path = tmp_path / security.SERVER_SECRET
    path.chmod(loose_mode)
    with pytest.raises(security.KeysError, match=rf"open to other users \(mode {loose_mode:04o}\); "
                                                 rf"run `chmod 600 {path}`"):
        security.load(tmp_path)
    path.chmod(0o600)
    security.load(tmp_path)


def test_an_unreadable_secret_is_named(tmp_path):
    security.generate(tmp_path)
    path = tmp_path / security.CLIENT_SECRET
    path.unlink()
    path.mkdir(mode=0o700)  # unreadable as a file even for root, who ignores permission bits
    with pytest.raises(security.KeysError, match=f"{security.CLIENT_SECRET}: cannot read it"):
        security.load(tmp_path)


def test_a_file_that_is_not_a_certificate_is_refused(tmp_path):
    security.generate(tmp_path)
    (tmp_path / security.SERVER_PUBLIC).write_text("hello\n")
    with pytest.raises(security.KeysError, match=f"{security.SERVER_PUBLIC}: not a CURVE certificate"):
        security.load(tmp_path)


def test_a_corrupted_key_is_refused(tmp_path):
    security.generate(tmp_path)
    path = tmp_path / security.CLIENT_SECRET
    text = path.read_text()
    path.write_text(text.replace('secret-key = "', 'secret-key = "xx'))
    with pytest.raises(security.KeysError, match="secret-key is not a 40-character Z85 CURVE key"):
        security.load(tmp_path)


def test_files_from_two_different_key_sets_are_refused(tmp_path):
    security.generate(tmp_path / "a")
    security.generate(tmp_path / "b")
    (tmp_path / "a" / security.SERVER_PUBLIC).write_bytes((tmp_path / "b" / security.SERVER_PUBLIC).read_bytes())
    with pytest.raises(security.KeysError, match="come from different key sets"):
        security.load(tmp_path / "a")


def test_a_client_only_host_needs_no_server_secret_and_cannot_serve(tmp_path):
    keys = security.generate(tmp_path)
    (tmp_path / security.SERVER_SECRET).unlink()
    client_keys = security.load(tmp_path, server=False)
    assert client_keys.server_secret is None and client_keys.client_secret == keys.client_secret
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    try:
        with pytest.raises(security.KeysError, match="cannot serve"):
            client_keys.configure_server(sock)
    finally:
        sock.close(0)
        ctx.term()


# ---- live sockets over loopback --------------------------------------------------------------

class Server:
    """A ROUTER that answers each request with how many it has received: its whole state."""

    def __init__(self, ctx, keys=None):
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.linger = 0
        if keys is not None:
            keys.configure_server(self.sock)
        self.monitor = self.sock.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
            | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
        self.port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.received = 0

    def serve_one(self, timeout_ms):
        if not self.sock.poll(timeout_ms):
            return False
        msg = recv(self.sock, router=True)
        self.received += 1
        reply(self.sock, msg, body={"received": self.received})
        return True

    def handshake(self, timeout=3.0):
        """The next handshake outcome the server saw, e.g. zmq.Event.HANDSHAKE_FAILED_AUTH."""
        if not self.monitor.poll(int(timeout * 1000)):
            return None
        return recv_monitor_message(self.monitor)["event"]

    def close(self):
        self.sock.disable_monitor()
        self.monitor.close(0)
        self.sock.close(0)


def client(ctx, port, configure=None, target_port=None):
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    if configure is not None:
        configure(sock)
    sock.connect(f"tcp://127.0.0.1:{target_port or port}")
    return sock


def request(sock, job=SECRET_JOB):
    header = {"op": P.PUSH, "seq": 1, "job": job, "from": "worker-0", "clock": 0, "lo": 0,
              "hi": SECRET_GRADIENT.size}
    sock.send_multipart(encode(header, [SECRET_GRADIENT]))


@pytest.fixture
def job(tmp_path):
    """A context with the job's authenticator running and a CURVE server in it."""
    keys = security.generate(tmp_path / "keys")
    ctx = zmq.Context()
    auth = security.start_authenticator(ctx, keys)
    server = Server(ctx, keys)
    yield {"ctx": ctx, "keys": keys, "server": server, "tmp": tmp_path}
    server.close()
    auth.stop()
    ctx.term()


def test_a_client_with_the_jobs_keys_gets_replies(job):
    server = job["server"]
    sock = client(job["ctx"], server.port, job["keys"].configure_client)
    try:
        for expected in (1, 2):
            request(sock)
            assert server.serve_one(3000)
            assert sock.poll(3000)
            answer = decode(sock.recv_multipart())
            assert answer.op == P.OK and answer.body() == {"received": expected}
        assert server.handshake() == zmq.Event.HANDSHAKE_SUCCEEDED
    finally:
        sock.close(0)


def _other_jobs_keys(job):
    return security.generate(job["tmp"] / "other-job").configure_client


def _unknown_client_key(job):
    public, secret = zmq.curve_keypair()

    def configure(sock):
        sock.curve_publickey, sock.curve_secretkey = public, secret
        sock.curve_serverkey = job["keys"].server_public
    return configure


@pytest.mark.parametrize("intruder, refusal", [
    (_other_jobs_keys, zmq.Event.HANDSHAKE_FAILED_PROTOCOL),      # cannot even read the server's hello
    (lambda job: None, zmq.Event.HANDSHAKE_FAILED_PROTOCOL),       # plain, no keys at all: mechanism mismatch
    (_unknown_client_key, zmq.Event.HANDSHAKE_FAILED_AUTH),        # right server key, client key not admitted
], ids=["another-jobs-keys", "no-keys", "unknown-client-key"])
def test_a_client_without_the_jobs_client_key_is_refused_and_heard_by_nobody(job, intruder, refusal):
    server = job["server"]
    sock = client(job["ctx"], server.port, intruder(job))
    try:
        request(sock)
        assert server.handshake() == refusal
        assert not server.serve_one(300)
        assert not sock.poll(50)
        assert server.received == 0
    finally:
        sock.close(0)
    good = client(job["ctx"], server.port, job["keys"].configure_client)
    try:
        request(good)
        assert server.serve_one(3000) and good.poll(3000)
        assert decode(good.recv_multipart()).body() == {"received": 1}
    finally:
        good.close(0)


def test_a_server_without_a_running_authenticator_refuses_everybody(tmp_path):
    keys = security.generate(tmp_path)
    ctx = zmq.Context()
    server = Server(ctx, keys)
    sock = client(ctx, server.port, keys.configure_client)
    try:
        request(sock)
        assert server.handshake() == zmq.Event.HANDSHAKE_FAILED_NO_DETAIL
        assert not server.serve_one(300) and server.received == 0
    finally:
        sock.close(0)
        server.close()
        ctx.term()


def test_configured_sockets_carry_the_curve_options(job):
    keys = job["keys"]
    sock = job["ctx"].socket(zmq.DEALER)
    try:
        keys.configure_client(sock)
        assert sock.curve_server == 0 and sock.mechanism == zmq.CURVE  # (keys are write-only options)
        server = job["server"].sock
        assert server.curve_server == 1 and server.mechanism == zmq.CURVE
        assert server.zap_domain == security.ZAP_DOMAIN.encode()
        assert zmq.has("curve")
    finally:
        sock.close(0)


class Relay(threading.Thread):
    """A man in the middle on loopback: forwards one TCP connection both ways, keeps every byte."""

    def __init__(self, target_port):
        super().__init__(daemon=True)
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.seen = bytearray()
        self.stopped = threading.Event()

    def run(self):
        self.listener.settimeout(0.05)
        while not self.stopped.is_set():
            try:
                downstream, _ = self.listener.accept()
                break
            except TimeoutError:
                continue
        else:
            return
        upstream = socket.create_connection(("127.0.0.1", self.target_port))
        peers = {downstream: upstream, upstream: downstream}
        with selectors.DefaultSelector() as selector:
            for s in peers:
                selector.register(s, selectors.EVENT_READ)
            while not self.stopped.is_set():
                for key, _ in selector.select(0.05):
                    data = key.fileobj.recv(1 << 16)
                    if not data:
                        self.stopped.set()
                        break
                    self.seen += data
                    peers[key.fileobj].sendall(data)
        for s in peers:
            s.close()

    def close(self):
        self.stopped.set()
        self.join(2)
        self.listener.close()


def _captured_round_trip(ctx, server, configure):
    relay = Relay(server.port)
    relay.start()
    sock = client(ctx, server.port, configure, target_port=relay.port)
    try:
        request(sock)
        assert server.serve_one(3000) and sock.poll(3000)
        sock.recv_multipart()
        return bytes(relay.seen)
    finally:
        sock.close(0)
        relay.close()


def test_traffic_on_the_wire_is_unreadable_with_curve_and_readable_without(job):
    markers = [SECRET_JOB.encode(), SECRET_GRADIENT.tobytes()]
    captured = _captured_round_trip(job["ctx"], job["server"], job["keys"].configure_client)
    assert len(captured) > SECRET_GRADIENT.nbytes
    assert not any(m in captured for m in markers)
    plain = Server(job["ctx"])  # the control: the same request without CURVE is there in clear
    try:
        captured = _captured_round_trip(job["ctx"], plain, None)
        assert all(m in captured for m in markers)
    finally:
        plain.close()


def test_the_authenticator_admits_exactly_the_keys_in_the_clients_directory(tmp_path):
    keys = security.generate(tmp_path)
    ctx = zmq.Context()
    with security.start_authenticator(ctx, keys) as auth:
        assert set(auth.certs[security.ZAP_DOMAIN]) == {keys.client_public}
    ctx.term()


def test_an_authenticator_with_no_admitted_client_key_refuses_to_start(tmp_path):
    keys = security.generate(tmp_path)
    (tmp_path / security.CLIENT_PUBLIC).unlink()
    ctx = zmq.Context()
    with pytest.raises(security.KeysError, match="holds no certificate with the job's client key"):
        security.start_authenticator(ctx, keys)
    ctx.term()


def test_a_stopped_authenticator_lets_the_context_terminate(tmp_path):
    keys = security.generate(tmp_path)
    ctx = zmq.Context()
    with security.start_authenticator(ctx, keys) as auth:
        assert auth.is_alive()
    assert not auth.is_alive()
    terminator = threading.Thread(target=ctx.term, daemon=True)
    started = time.monotonic()
    terminator.start()
    terminator.join(5)
    assert not terminator.is_alive(), "ctx.term() hung: a socket of the authenticator is still open"
    assert time.monotonic() - started < 5
