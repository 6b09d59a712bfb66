"""A parameter-server shard: the key ranges it serves, their update rule, and the consistency model.

One thread serves one ROUTER socket for the data plane; the heartbeat to the coordinator beats
on a thread of its own (`control.Heartbeat`, as in every role) and hands its replies to the
serving loop through a `control.Mailbox`. The arithmetic and bookkeeping live in
`store.ParameterStore`; what the shard holds (ranges at their epochs, backups, checkpoints) in
`holdings.Holdings`; replication in `replication.py` (primary) and `backups.py` (backup). This
module is the process around them: sockets, the coordinator's orders, parked reads. Reads that
the consistency model cannot serve yet are parked and answered as soon as an update or a change
of membership allows; the socket keeps serving everybody else in the meantime.
"""
from __future__ import annotations

import logging
import pathlib
import time
from typing import Any

import numpy as np
import zmq

from . import protocol as P
from . import security, spans
from .address import advertised
from .backups import state_of
from .config import expected_workers
from .control import ControlClient, Heartbeat, Mailbox
from .faults import FaultPlan
from .holdings import Holdings
from .incoming import Incoming, header_spans
from .layout import layout_from_dict
from .reads import ReaderViews
from .replication import Replicator
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
        self.replicator: Replicator | None = None
        self.checkpoint_requests = 0
        self.coordinator_lost = False  # the job ended for us because the coordinator fell silent
        self.mailbox = Mailbox()  # heartbeat replies, from the heartbeat thread
        self.heartbeat: Heartbeat | None = None
        self.published: dict = {}  # the figures the next heartbeat carries (made by the serving loop)
        self.last_orders = 0.0  # when we last followed the coordinator's word (monotonic)
        # per store (by its first key): the snapshot, range and frame of the last read over the wire
        self.frames: dict[int, tuple[np.ndarray, int, int, SharedFrame]] = {}
        # Shared memory with workers on this host (ps/shm.py): never under CURVE, whose promise
        # is that nothing travels outside the encrypted connections.
        self.incoming = Incoming(keys is None)  # how pushes arrive: frames, codecs, spans, shared memory

    # ---- start-up ------------------------------------------------------------------------
    def join(self, startup_timeout: float = 60.0) -> None:
        """Register with the coordinator; receive the job, the layout and the initial weights of
        the ranges to serve; then, if there are checkpoints of them (a restart, or `--resume`),
        reload them."""
        body: dict[str, Any] = {"address": self.address}
        if self.requested_rank is not None:
            body["rank"] = self.requested_rank
        msg = self.control.register(body, startup_timeout)
        info = msg.body()
        self.rank = info["rank"]
        self.job_id = info["job_id"]
        self.config = info["config"]
        self.layout = layout_from_dict(info["layout"])
        cluster = self.config["cluster"]
        self.max_bytes = int(cluster["max_message_mb"] * (1 << 20))
        self.sock.setsockopt(zmq.MAXMSGSIZE, 4 * self.max_bytes)  # hard memory bound per frame
        self.heartbeat_interval = cluster["heartbeat_interval"]
        self.heartbeat_timeout = cluster["heartbeat_timeout"]
        self.checkpoint_every = self.config["checkpoint"]["every_seconds"]
        self.max_workers = expected_workers(self.config) + P.MAX_EXTRA_WORKERS
        self.faults = FaultPlan(self.config["faults"], P.SHARD, self.rank, self.config["seed"],
                                restarted=bool(info.get("restart")))
        self.incoming.local = self.incoming.local and cluster["shared_memory"]
        self.holdings = Holdings(self.rank, self.layout, self.config, self.job_id, info["workers"], self.incoming,
                                 self.run_dir)
        serve = {int(r): epoch for r, epoch in info["serve"].items()}
        shapes = [(hi - lo,) for lo, hi in (self.layout.ranges[r] for r in serve)]
        if [a.shape for a in msg.arrays] != shapes:
            raise RuntimeError("the coordinator sent no initial weights for the ranges this shard serves")
        for (rng, epoch), weights in zip(serve.items(), msg.arrays):
            self.holdings.serve(rng, epoch, self.holdings.make_store(rng, weights))
        self.views = ReaderViews(self.config["compression"])  # compressed reads: each reader's view
        self.replicator = Replicator(self.ctx, self.job_id, self.control.name, self.max_bytes, self.configure)
        if self.resume or info.get("restart"):
            self.holdings.restore()
        served = ", ".join(f"{r} [{s.lo}, {s.hi})" for r, s in self.holdings.stores.items()) or "none (a backup)"
        log.info("shard %d at %s serving ranges %s, %s consistency", self.rank, self.address, served,
                 self.config["consistency"]["mode"])

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
        backups: dict = {}  # the replication sockets registered with the poller
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
            backups = _follow_sockets(poller, backups, self.replicator.sockets())
            events = dict(poller.poll(max(1, int((next_publish - time.monotonic()) * 1000))))
            if self.mailbox.fd in events:
                for body in self.mailbox.take():
                    state = self._on_heartbeat_reply(body)
                    if state in P.FINAL_STATES:
                        break
            for sock, link in backups.items():
                if sock in events and not self.replicator.on_replies(link):
                    self._stand_down(link.rng, "its backup says the range has moved on to a newer epoch")
            if self.sock in events:
                for _ in range(256):  # drain a burst, but keep heartbeats on time
                    try:
                        self._handle_raw()
                    except zmq.Again:
                        break
                    if not self.sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:  # cheaper than zmq.Again
                        break
            step = max((s.updates_applied for s in self.holdings.stores.values()), default=0)
            self.faults.at_step(step)
            self.faults.stall(step, self.heartbeat.hold)
        return state

    def save_checkpoint(self) -> None:
        """Checkpoint the ranges we serve, if the coordinator's word is fresh: a shard that was
        stopped may have been deposed meanwhile, and must not write over its successor's."""
        if time.monotonic() - self.last_orders < self.heartbeat_timeout:
            self.holdings.save()

    # ---- the coordinator's orders --------------------------------------------------------
    def _on_heartbeat_reply(self, body: dict) -> str:
        if body.get("lost"):
            log.error("%s: shutting down", body["reason"])
            self.coordinator_lost = True
            return P.FAILED
        if body.get("state") == "unreachable":  # a beat went unanswered: carry on meanwhile
            return P.RUNNING
        if body.get("workers") is not None:
            self.holdings.set_live(body["workers"])
            self.views.retain(body["workers"])
        self._follow(body)
        self.last_orders = time.monotonic()
        if body.get("checkpoint", 0) > self.checkpoint_requests:
            self.checkpoint_requests = body["checkpoint"]
            self.save_checkpoint()
        self._serve_parked()
        return body.get("state", P.RUNNING)

    def _follow(self, orders: dict) -> None:
        """Serve what the coordinator says we serve, at its epochs: stand down from the rest,
        take over what we hold the backup of, keep the backups it names, replicate as it says."""
        h = self.holdings
        serve = {int(r): epoch for r, epoch in orders.get("serve", {}).items()}
        for rng in list(h.stores):
            if serve.get(rng) != h.epochs[rng]:
                self._stand_down(rng, "the coordinator says another shard serves it now" if rng not in serve
                                 else f"the coordinator has it at epoch {serve[rng]}")
        for rng, epoch in serve.items():
            if rng not in h.stores:
                store = h.backups.promote(rng)
                if store is None:
                    log.error("shard %d told to serve range %d at epoch %d, but holds no state of it",
                              self.rank, rng, epoch)
                    continue
                log.warning("shard %d promoted: now serving range %d at epoch %d from its backup "
                            "(%d updates)", self.rank, rng, epoch, store.updates_applied)
                h.serve(rng, epoch, store)
        h.backups.follow(orders.get("backups", {}))
        replicate = orders.get("replicate", {})
        for rng, epoch in h.epochs.items():
            self.replicator.follow(rng, replicate.get(str(rng)), epoch, lambda rng=rng: state_of(h.stores[rng]))
        self.published = self.stats()

    def _stand_down(self, rng: int, why: str) -> None:
        """Stop serving `rng` at once: its held replies and parked reads are refused, never acknowledged."""
        if rng not in self.holdings.stores:
            return
        self.holdings.stand_down(rng, why)
        self.replicator.stand_down(rng)
        for key, (msg, _, _) in list(self.parked.items()):
            if self.holdings.range_of(msg.header["lo"], msg.header["hi"]) == rng:
                del self.parked[key]
                self._refuse_moved(msg, rng)
        self.published = self.stats()

    def _refuse_moved(self, msg: Message, rng: int) -> None:
        reply_error(self.sock, msg.envelope, msg.seq, f"shard {self.rank} no longer serves range {rng}: ask the "
                    f"coordinator which shard does", retry=True, moved=True)

    # ---- the data plane ------------------------------------------------------------------
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

    def _handle(self, msg: Message) -> None:
        h = msg.header
        if msg.op not in P.DATA_OPS:
            raise WireError(f"operation {msg.op!r} is not served by a shard")
        if h["job"] != self.job_id:
            raise WireError(f"job {h['job']!r} is not this shard's job")
        if msg.op in (P.REPLICATE, P.STATE):
            self._from_primary(msg)
            return
        lo, hi = h["lo"], h["hi"]
        rng, store = self.holdings.serving(lo, hi, h.get("epoch"))
        role, rank = P.role_of(h["from"])
        if role == P.WORKER and rank >= self.max_workers:
            raise WireError(f"{h['from']!r} is not a worker of this job")
        clock = h["clock"]
        wanted = header_spans(h["read_spans"], lo, hi, "read_spans") if "read_spans" in h and msg.op != P.PUSH else None
        held = self._push(msg, rng, store, rank) if msg.op != P.PULL else None
        if msg.op == P.PUSH:
            self._respond(rng, held, msg, lambda: reply(self.sock, msg, version=store.updates_applied))
        else:
            reader = rank if role == P.WORKER else None
            read_clock = clock + 1 if msg.op == P.PUSH_PULL else clock
            if store.can_read(reader, read_clock):
                self._respond(rng, held, msg, lambda: self._read(msg, store, reader, read_clock, wanted))
            elif len(self.parked) >= MAX_PARKED and (h["from"], read_clock, lo) not in self.parked:
                raise WireError(f"too many reads waiting ({MAX_PARKED}); ask again later", retry=True)
            else:  # a resent read replaces the one it repeats
                self.parked[(h["from"], read_clock, lo)] = (msg, read_clock, wanted)
        self._serve_parked()

    def _push(self, msg: Message, rng: int, store: ParameterStore, worker: int) -> int | None:
        """Apply a push (once) and forward it to the range's backup; the replication seq its
        reply waits on, if any (a push seen before waits on its first copy's, if still held)."""
        h = msg.header
        grad, keys = self.incoming.gradient(msg, h["lo"], h["hi"])
        try:
            new = store.push(worker, h["clock"], h["lo"], h["hi"], grad, h.get("read_version"), keys)
        except StalePush as exc:
            raise WireError(str(exc)) from None
        if not new:
            return self.replicator.in_flight(rng, worker, h["clock"], h["lo"], h["hi"])
        if rng in self.replicator.links:
            borrowed = self.incoming.borrowed(grad) or ("grad_at" in h and keys is None)
            if borrowed:
                grad = grad.copy()  # ZeroMQ sends it later: the next push must not overwrite it
        return self.replicator.forward(rng, worker, h["clock"], h["lo"], h["hi"], grad, h.get("read_version"), keys)

    def _respond(self, rng: int, held: int | None, msg: Message, send) -> None:
        """Reply now, or once the backup has acknowledged the push (replication); a reply held
        for a range we stand down from becomes a refusal."""
        if held is None:
            send()
        else:
            self.replicator.hold(rng, held, lambda ok: send() if ok else self._refuse_moved(msg, rng))

    def _from_primary(self, msg: Message) -> None:
        """A replicated push or a part of a range's state, for a backup we hold."""
        if self.holdings.from_primary(msg):
            self.published = self.stats()  # the coordinator hears at once that the backup is ready
        reply(self.sock, msg)

    def _read(self, msg: Message, store: ParameterStore, worker: int | None, clock: int,
              wanted: spans.Spans | None = None) -> None:
        """Answer a read: by shared memory if the reader maps our segment, else the weights
        of [lo, hi) over the wire, or only the keys `wanted` (`compression.rows`), or the change
        since the reader's view of them (`compression.pull`, ps/reads.py)."""
        h = msg.header
        seg = self.holdings.segments.get((store.lo, store.hi)) if self.incoming.local else None
        if seg is not None and h.get("shm") is True:  # the reader copies from our segment itself
            on_record = store.admit_read(worker, clock)
            self.views.drop(h["from"], h["lo"], h["hi"])
            reply(self.sock, msg, version=store.updates_applied, clock=on_record, segment=seg.ref,
                  offset=h["lo"] - store.lo)
        else:
            change = self.views.answer(h, store.weights, store.lo, wanted)
            wanted = None if change.whole else wanted  # a full read starts a view: the whole range
            if change.arrays is not None or wanted is not None:  # encoded or gathered afresh: no snapshot
                on_record = store.admit_read(worker, clock)
                arrays = change.arrays or (spans.gather(store.weights, store.lo, wanted),)
            else:
                snapshot, on_record = store.read(worker, clock, h["lo"], h["hi"])
                frame = self.frames.get(store.lo)  # the last read's frame, shared while it fits
                if frame is None or frame[0] is not store.snapshot or frame[1:3] != (h["lo"], h["hi"]):
                    frame = self.frames[store.lo] = (store.snapshot, h["lo"], h["hi"], SharedFrame(snapshot))
                arrays = (frame[3],)
            where = {"segment": seg.ref, "offset": h["lo"] - store.lo} if seg is not None else {}
            reply(self.sock, msg, arrays=arrays, version=store.updates_applied, clock=on_record, **where,
                  **change.fields)
        self.pulls_served += 1

    def _serve_parked(self) -> None:
        for key, (msg, clock, wanted) in list(self.parked.items()):
            _, rank = P.role_of(msg.header["from"])
            store = self.holdings.stores.get(self.holdings.range_of(msg.header["lo"], msg.header["hi"]))
            if store is not None and store.can_read(rank, clock):
                del self.parked[key]
                self._read(msg, store, rank, clock, wanted)

    # ---- state ---------------------------------------------------------------------------
    def stats(self) -> dict:
        return {"rank": self.rank, "address": self.address, "pulls": self.pulls_served, "errors": self.errors,
                "parked": len(self.parked), "reads": self.views.stats(), **self.holdings.figures()}

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
        s = self.stats()
        log.info("shard %d done (%s): ranges %s, %d pushes (%d duplicates ignored), %d updates, %d pulls, "
                 "%d bad messages", self.rank, state, sorted(self.holdings.stores), s["pushes"], s["duplicates"],
                 s["updates"], self.pulls_served, self.errors)

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


def _follow_sockets(poller: zmq.Poller, registered: dict, now: dict) -> dict:
    """Keep the poller on the replication sockets there are now."""
    for sock in registered.keys() - now.keys():
        poller.unregister(sock)
    for sock in now.keys() - registered.keys():
        poller.register(sock, zmq.POLLIN)
    return now


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
