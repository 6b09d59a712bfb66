"""A parameter-server shard: one contiguous key range, its update rule, and the consistency model.

One thread serves one ROUTER socket for the data plane; the heartbeat to the coordinator beats
on a thread of its own (`control.Heartbeat`, as in every role) and hands its replies to the
serving loop through a `control.Mailbox`. The arithmetic and bookkeeping live in
`store.ParameterStore`; this module is the process around it: sockets, heartbeats, parked
reads, checkpoints. Reads that the consistency model cannot
serve yet are parked and answered as soon as an update or a change of membership allows; the
socket keeps serving everybody else in the meantime.
"""
from __future__ import annotations

import logging
import pathlib
import time
from typing import Any

import numpy as np
import zmq

from . import checkpoint, security, shm, spans
from . import protocol as P
from .address import advertised
from .config import planned_updates
from .control import ControlClient, Heartbeat, Mailbox
from .faults import FaultPlan
from .incoming import Incoming, header_spans
from .layout import layout_from_dict
from .replication import Replicator, backup_of
from .store import ParameterStore, StalePush
from .wire import Message, SharedFrame, WireError, bind_socket, recv, reply, reply_error

log = logging.getLogger(__name__)
MAX_PARKED = 4096  # reads waiting on the consistency model, from everybody together


class Shard:
    def __init__(self, ctx: zmq.Context, coordinator: str, bind: str, advertise: str | None = None,
                 rank: int | None = None, run_dir: str | None = None, resume: bool = False,
                 keys: security.Keys | None = None):
        self.ctx = ctx
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if keys is not None:  # CURVE: must come before bind
            keys.configure_server(self.sock)
        bind_socket(self.sock, bind)
        endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.address = advertised(endpoint, advertise, coordinator)
        self.configure = keys.configure_client if keys is not None else None
        self.control = ControlClient(ctx, coordinator, P.SHARD, configure=self.configure)
        self.requested_rank = rank
        self.run_dir = pathlib.Path(run_dir) if run_dir else None
        self.resume = resume
        # reads waiting on the consistency model, by (reader, clock, first key): a shard that
        # serves two ranges (a promoted backup) gets two reads per round trip from each worker
        self.parked: dict[tuple[str, int, int], tuple[Message, int, spans.Spans | None]] = {}
        self.pulls_served = 0
        self.errors = 0
        self.restored_updates: int | None = None
        self.replicator: Replicator | None = None
        self.checkpoint_requests = 0
        self.coordinator_lost = False  # the job ended for us because the coordinator fell silent
        self.mailbox = Mailbox()  # heartbeat replies, from the heartbeat thread
        self.heartbeat: Heartbeat | None = None
        self.published: dict = {}  # the figures the next heartbeat carries (made by the serving loop)
        # per store (by its first key): the snapshot, range and frame of the last read over the wire
        self.frames: dict[int, tuple[np.ndarray, int, int, SharedFrame]] = {}
        # Shared memory with workers on this host (ps/shm.py): never under CURVE, whose promise
        # is that nothing travels outside the encrypted connections.
        self.local = keys is None
        self.segments: dict[tuple[int, int], shm.Segment] = {}  # each store's weights, by its range
        self.incoming = Incoming(self.local)  # how pushes arrive: frames, codecs, spans, shared memory

    # ---- start-up ------------------------------------------------------------------------
    def join(self, startup_timeout: float = 60.0) -> None:
        """Register with the coordinator; receive the job, the layout and the initial weights;
        then, if this shard has a checkpoint of its own (a restart, or `--resume`), reload it."""
        body: dict[str, Any] = {"address": self.address}
        if self.requested_rank is not None:
            body["rank"] = self.requested_rank
        msg = self.control.register(body, startup_timeout)
        info = msg.body()
        self.rank = info["rank"]
        self.job_id = info["job_id"]
        self.config = info["config"]
        self.layout = layout_from_dict(info["layout"])
        self.lo, self.hi = self.layout.ranges[self.rank]
        cluster = self.config["cluster"]
        self.max_bytes = int(cluster["max_message_mb"] * (1 << 20))
        self.sock.setsockopt(zmq.MAXMSGSIZE, 4 * self.max_bytes)  # hard memory bound per frame
        self.heartbeat_interval = cluster["heartbeat_interval"]
        self.heartbeat_timeout = cluster["heartbeat_timeout"]
        self.checkpoint_every = self.config["checkpoint"]["every_seconds"]
        self.max_workers = self.config["workers"]["count"] + P.MAX_EXTRA_WORKERS
        self.faults = FaultPlan(self.config["faults"], P.SHARD, self.rank, self.config["seed"],
                                restarted=bool(info.get("restart")))
        if not msg.arrays or msg.arrays[0].shape != (self.hi - self.lo,):
            raise RuntimeError("coordinator sent no initial weights for this shard's range")
        mode = self.config["consistency"]
        self.local = self.incoming.local = self.local and cluster["shared_memory"]

        def store(rng: int, weights) -> ParameterStore:
            lo, hi = self.layout.ranges[rng]
            buffer = None
            if self.local:
                try:
                    seg = self.segments[(lo, hi)] = shm.Segment.create(hi - lo, f"{self.job_id}-range{rng}")
                    buffer = seg.array
                except OSError as exc:  # e.g. a sandbox that forbids memfd_create: the wire still works
                    log.warning("shard %d: no shared memory (%s); every array goes over the wire", self.rank, exc)
                    self.local = self.incoming.local = False
            return ParameterStore(lo, hi, weights, self.config["optimizer"], mode["mode"], mode["staleness"],
                                  info["workers"], planned_updates(self.config), buffer=buffer)

        self.store = store(self.rank, msg.arrays[0])
        self.stores = {self.rank: self.store}   # the ranges this shard serves
        self.backups: dict[int, ParameterStore] = {}
        if self.config["shards"]["replication"] > 1:
            held = backup_of(self.rank, self.layout.num_shards)
            self.backups[held] = store(held, msg.arrays[1])
        self.replicator = Replicator(self.ctx, self.job_id, self.control.name, self.max_bytes, self.configure)
        # With replication, pushes wait until the coordinator has named our backup holder (or
        # said there is none): a push acknowledged before that would live on one process only.
        self.backup_known = self.config["shards"]["replication"] == 1
        path = self.checkpoint_path()
        if path is not None and path.exists() and (self.resume or info.get("restart")):
            self.restore(path)
        log.info("shard %d serving keys [%d, %d) (%.2f MB) at %s, %s consistency", self.rank, self.lo,
                 self.hi, self.store.weights.nbytes / 1e6, self.address, mode["mode"])

    def checkpoint_path(self) -> pathlib.Path | None:
        return self.run_dir / "checkpoints" / f"shard-{self.rank}.npz" if self.run_dir else None

    def restore(self, path: pathlib.Path) -> None:
        arrays, meta = checkpoint.load(path)
        if meta.get("layout") != self.layout.fingerprint():
            raise RuntimeError(f"checkpoint {path} was written for another model or shard count")
        self.store.load_state_dict(arrays, meta)
        self.restored_updates = self.store.updates_applied
        log.info("shard %d restored from %s: %d updates", self.rank, path, self.restored_updates)

    def save_checkpoint(self) -> None:
        path = self.checkpoint_path()
        if path is None:
            return
        arrays, meta = self.store.state_dict()
        meta.update(rank=self.rank, job_id=self.job_id, layout=self.layout.fingerprint(), time=time.time())
        checkpoint.save(path, arrays, meta)

    # ---- the loop ------------------------------------------------------------------------
    def serve(self) -> str:
        """Serve until the coordinator declares the job over; return the final job state."""
        self.published = self.stats()
        self.heartbeat = Heartbeat(self.ctx, self.control.address, self.job_id, self.control.name,
                                   self.heartbeat_interval, lambda: self.published, self.mailbox.put,
                                   timeout=self.heartbeat_timeout, configure=self.configure)
        self.heartbeat.start()
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self.mailbox.fd, zmq.POLLIN)
        replica_sock = None
        next_publish = 0.0
        next_checkpoint = time.monotonic() + self.checkpoint_every if self.checkpoint_every else float("inf")
        state = P.RUNNING
        while state not in P.FINAL_STATES:
            now = time.monotonic()
            if now >= next_publish:  # the heartbeat thread sends what we publish, never reads our stores
                self.published = self.stats()
                next_publish = now + self.heartbeat_interval / 2
            if now >= next_checkpoint:
                self.save_checkpoint()
                next_checkpoint = now + self.checkpoint_every
            if self.replicator.sock is not replica_sock:  # the backup holder changed
                if replica_sock is not None:
                    poller.unregister(replica_sock)
                replica_sock = self.replicator.sock
                if replica_sock is not None:
                    poller.register(replica_sock, zmq.POLLIN)
            events = dict(poller.poll(max(1, int((next_publish - time.monotonic()) * 1000))))
            if self.mailbox.fd in events:
                for body in self.mailbox.take():
                    state = self._on_heartbeat_reply(body)
                    if state in P.FINAL_STATES:
                        break
            if replica_sock is not None and replica_sock in events:
                self.replicator.on_acks()
            if self.sock in events:
                for _ in range(256):  # drain a burst, but keep heartbeats on time
                    try:
                        self._handle_raw()
                    except zmq.Again:
                        break
                    if not self.sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:  # cheaper than zmq.Again
                        break
                self.faults.at_step(self.store.updates_applied)
        return state

    def _on_heartbeat_reply(self, body: dict) -> str:
        if body.get("lost"):
            log.error("%s: shutting down", body["reason"])
            self.coordinator_lost = True
            return P.FAILED
        if body.get("state") == "unreachable":  # a beat went unanswered: carry on meanwhile
            return P.RUNNING
        if body.get("workers") is not None:
            for store in (*self.stores.values(), *self.backups.values()):
                store.set_live(body["workers"])
        for rng in body.get("serve") or ():
            if rng in self.backups and rng not in self.stores:  # our primary for rng died: take over
                log.warning("shard %d promoted: now serving range %d from its backup", self.rank, rng)
                self.stores[rng] = self.backups.pop(rng)
        if "replicate_to" in body:
            self.replicator.set_target(body["replicate_to"])
            self.backup_known = True
        if body.get("checkpoint", 0) > self.checkpoint_requests:
            self.checkpoint_requests = body["checkpoint"]
            self.save_checkpoint()
        self._serve_parked()
        return body.get("state", P.RUNNING)

    def _handle_raw(self) -> None:
        try:
            msg = recv(self.sock, router=True, max_bytes=self.max_bytes, flags=zmq.NOBLOCK)
        except WireError as err:  # garbled on the way: the sender may simply send it again
            self.errors += 1
            reply_error(self.sock, getattr(err, "envelope", []), 0, str(err), retry=True)
            return
        try:
            self._handle(msg)
        except WireError as err:
            self.errors += 1
            reply_error(self.sock, msg.envelope, msg.seq, str(err), retry=err.retry, **err.fields)

    # ---- the data plane ------------------------------------------------------------------
    def _handle(self, msg: Message) -> None:
        h = msg.header
        if msg.op not in P.DATA_OPS:
            raise WireError(f"operation {msg.op!r} is not served by a shard")
        if h["job"] != self.job_id:
            raise WireError(f"job {h['job']!r} is not this shard's job")
        if msg.op == P.REPLICATE:
            self._replicated(msg)
            return
        lo, hi = h["lo"], h["hi"]
        store = self._store_for(lo, hi)
        role, rank = P.role_of(h["from"])
        if role == P.WORKER and rank >= self.max_workers:
            raise WireError(f"{h['from']!r} is not a worker of this job")
        clock = h["clock"]
        wanted = header_spans(h["read_spans"], lo, hi, "read_spans") if "read_spans" in h and msg.op != P.PUSH else None
        held = None
        if msg.op in (P.PUSH, P.PUSH_PULL):
            if store is self.store and not self.backup_known:
                raise WireError("this shard's backup is not attached yet; ask again", retry=True)
            grad, keys = self.incoming.gradient(msg, lo, hi)
            try:
                new = store.push(rank, clock, lo, hi, grad, h.get("read_version"), keys)
            except StalePush as exc:
                raise WireError(str(exc)) from None
            if new and store is self.store:
                borrowed = self.incoming.borrowed(grad) or ("grad_at" in h and keys is None)
                if borrowed and self.replicator.channel is not None:
                    grad = grad.copy()  # ZeroMQ sends it later: the next push must not overwrite it
                held = self.replicator.forward(self.rank, rank, clock, lo, hi, grad, h.get("read_version"), keys)
        if msg.op == P.PUSH:
            self._respond(held, lambda: reply(self.sock, msg, version=store.updates_applied))
        else:
            reader = rank if role == P.WORKER else None
            read_clock = clock + 1 if msg.op == P.PUSH_PULL else clock
            if store.can_read(reader, read_clock):
                self._respond(held, lambda: self._read(msg, store, reader, read_clock, wanted))
            elif len(self.parked) >= MAX_PARKED and (h["from"], read_clock, lo) not in self.parked:
                raise WireError(f"too many reads waiting ({MAX_PARKED}); ask again later", retry=True)
            else:  # a resent read replaces the one it repeats
                self.parked[(h["from"], read_clock, lo)] = (msg, read_clock, wanted)
        self._serve_parked()

    def _store_for(self, lo: int, hi: int) -> ParameterStore:
        for store in self.stores.values():
            if store.lo <= lo <= hi <= store.hi:
                return store
        served = ", ".join(f"[{s.lo}, {s.hi})" for s in self.stores.values())
        raise WireError(f"range [{lo}, {hi}) is outside this shard's range {served}")

    def _respond(self, held: int | None, send) -> None:
        """Reply now, or once the backup has acknowledged the push (replication)."""
        if held is None:
            send()
        else:
            self.replicator.hold(held, send)

    def _replicated(self, msg: Message) -> None:
        """Apply a push our primary forwarded to the backup we hold, then acknowledge it."""
        h = msg.header
        store = self.backups.get(h["range"])
        if store is None:
            raise WireError(f"this shard holds no backup of range {h['range']}")
        if not store.lo <= h["lo"] <= h["hi"] <= store.hi:
            raise WireError(f"range [{h['lo']}, {h['hi']}) is outside range {h['range']}")
        grad, keys = self.incoming.gradient(msg, h["lo"], h["hi"])
        try:
            store.push(h["worker"], h["clock"], h["lo"], h["hi"], grad, h.get("read_version"), keys)
        except StalePush as exc:
            raise WireError(str(exc)) from None
        reply(self.sock, msg)

    def _read(self, msg: Message, store: ParameterStore, worker: int | None, clock: int,
              wanted: spans.Spans | None = None) -> None:
        """Answer a read: by shared memory if the reader maps our segment, else the weights
        of [lo, hi) over the wire, or only the keys `wanted` (`compression.rows`)."""
        h = msg.header
        seg = self.segments.get((store.lo, store.hi))
        if seg is not None and h.get("shm") is True:  # the reader copies from our segment itself
            on_record = store.admit_read(worker, clock)
            reply(self.sock, msg, version=store.updates_applied, clock=on_record, segment=seg.ref,
                  offset=h["lo"] - store.lo)
        else:
            if wanted is not None:  # some keys only: gathered afresh, so no snapshot is needed
                on_record = store.admit_read(worker, clock)
                weights = spans.gather(store.weights, store.lo, wanted)
            else:
                snapshot, on_record = store.read(worker, clock, h["lo"], h["hi"])
                frame = self.frames.get(store.lo)  # the last read's frame, shared while it fits
                if frame is None or frame[0] is not store.snapshot or frame[1:3] != (h["lo"], h["hi"]):
                    frame = self.frames[store.lo] = (store.snapshot, h["lo"], h["hi"], SharedFrame(snapshot))
                weights = frame[3]
            where = {"segment": seg.ref, "offset": h["lo"] - store.lo} if seg is not None else {}
            reply(self.sock, msg, arrays=(weights,), version=store.updates_applied, clock=on_record, **where)
        self.pulls_served += 1

    def _serve_parked(self) -> None:
        for key, (msg, clock, wanted) in list(self.parked.items()):
            _, rank = P.role_of(msg.header["from"])
            store = self._store_for(msg.header["lo"], msg.header["hi"])
            if store.can_read(rank, clock):
                del self.parked[key]
                self._read(msg, store, rank, clock, wanted)

    # ---- state ---------------------------------------------------------------------------
    def stats(self) -> dict:
        s = self.store
        return {"rank": self.rank, "address": self.address, "pushes": s.pushes_applied,
                "duplicates": s.duplicates, "updates": s.updates_applied, "pulls": self.pulls_served,
                "errors": self.errors, "clock": s.consistency.min_clock(), "parked": len(self.parked),
                "restored_updates": self.restored_updates,
                "ranges": {str(r): st.updates_applied for r, st in self.stores.items()},
                "read_staleness": {str(k): v for k, v in sorted(s.consistency.staleness_seen.items())},
                "push_staleness": {str(k): v for k, v in sorted(s.push_staleness.items())}}

    def finish(self, state: str) -> None:
        """Write the final checkpoint (not over a good one when the job failed) and leave, so
        that the coordinator need not wait for our heartbeat to stop."""
        if state != P.FAILED:
            self.save_checkpoint()
        if not self.coordinator_lost:
            try:
                self.control.leave(self.stats())
            except (TimeoutError, RuntimeError) as exc:
                log.warning("could not say goodbye to the coordinator: %s", exc)
        s = self.store
        log.info("shard %d done (%s): %d pushes (%d duplicates ignored), %d updates, %d pulls, %d bad messages",
                 self.rank, state, s.pushes_applied, s.duplicates, s.updates_applied, self.pulls_served, self.errors)

    def close(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.stop()
            self.heartbeat.join(timeout=5)
        self.mailbox.close()
        if self.replicator is not None:
            self.replicator.close()
        self.incoming.close()
        self.sock.close(0)
        self.control.close()


def run(coordinator: str, bind: str, advertise: str | None = None, rank: int | None = None,
        run_dir: str | None = None, startup_timeout: float = 60.0, resume: bool = False,
        keys: security.Keys | None = None) -> int:
    """The `downpour shard` role: join, serve, checkpoint, leave. Returns an exit code."""
    ctx = zmq.Context()
    auth = security.start_authenticator(ctx, keys) if keys is not None else None
    shard = None
    try:
        shard = Shard(ctx, coordinator, bind, advertise, rank, run_dir, resume, keys)
        shard.join(startup_timeout)
        state = shard.serve()
        shard.finish(state)
        return 1 if shard.coordinator_lost else 0  # a job that failed elsewhere is no crash of ours
    finally:
        if shard is not None:
            shard.close()
        if auth is not None:
            auth.stop()
        ctx.term()
