"""Replication, the primary's side: chain replication of each range to one backup (the OSDI'14
parameter server's design, with one backup per range).

With `shards.replication: 2` every range has a backup on another shard (`ranges.py` chooses
it). The primary keeps one `Link` per range it serves: it first sends the range's whole state
(weights, update rule, clocks, push log; `backups.state_of`), then forwards every push it
applies, in order, on that same line. It holds its reply to the worker until the backup has
acknowledged the push (a push that arrives again while its first copy is held waits for the
same acknowledgement), so an acknowledged push is on two processes. When a primary dies the
coordinator promotes the ready backup, workers re-route their unanswered pushes to it, and
the exactly-once log both share applies a resent push once, never twice.

A backup may refuse. "Deposed" means the range has moved on to a newer epoch without us: the
shard stands down from the range at once, and every reply held for it becomes a refusal (the
workers re-route); none is ever acknowledged. Any other refusal (the backup does not know its
assignment yet, or restarted) keeps the held replies held, and the state goes again once the
coordinator confirms the same backup. Replies are released as acknowledged only on the
backup's word, or when the coordinator says the range has no backup (it runs unreplicated
until one is ready again: no promotion can happen meanwhile, so nothing acknowledged is lost
to one).
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

import numpy as np
import zmq

from . import protocol as P
from . import spans
from .wire import Channel, WireError, recv

log = logging.getLogger(__name__)

Release = Callable[[bool], None]  # a held reply: sent as an acknowledgement (True) or as a refusal (False)


@dataclasses.dataclass
class Link:
    """One range's line to its backup."""

    rng: int
    target: str
    gen: int
    epoch: int
    channel: Channel
    state_seq: int = 0       # the sequence number of the last part of the state we sent
    synced: bool = False     # the backup has acknowledged the state
    broken: bool = False     # the backup refused: the state goes again when the coordinator confirms it
    waiting: dict[int, list[Release]] = dataclasses.field(default_factory=dict)  # seq -> replies it holds
    pushes: dict[tuple, int] = dataclasses.field(default_factory=dict)  # push id -> seq, while held

    def release(self, seqs, ok: bool) -> None:
        for seq in seqs:
            for send in self.waiting.pop(seq, ()):
                send(ok)
        if not self.waiting:
            self.pushes.clear()
        elif len(self.pushes) > 4 * len(self.waiting):
            self.pushes = {k: s for k, s in self.pushes.items() if s in self.waiting}


class Replicator:
    def __init__(self, ctx: zmq.Context, job: str, sender: str, max_bytes: int, configure=None):
        self.ctx, self.job, self.sender = ctx, job, sender
        self.max_bytes, self.configure = max_bytes, configure
        self.links: dict[int, Link] = {}
        self.forwarded = 0

    def sockets(self) -> dict[zmq.Socket, Link]:
        return {link.channel.sock: link for link in self.links.values()}

    def follow(self, rng: int, order: dict | None, epoch: int,
               state: Callable[[], tuple[dict[str, np.ndarray], dict]]) -> None:
        """Adopt the coordinator's word on range `rng`'s backup: {"to": address, "gen": n}, or
        None for none. `state` gives the range's state as it is now, to start a backup from."""
        link = self.links.get(rng)
        if order is None:
            if link is not None:
                log.warning("range %d: no backup: running unreplicated", rng)
                self._close(link, ok=True)
            return
        if link is not None and (link.target, link.gen) == (order["to"], order["gen"]):
            if link.broken:
                self._send_state(link, state)
            return
        if link is not None:  # another backup now: the coordinator counts the range as unreplicated
            self._close(link, ok=True)
        channel = Channel(self.ctx, order["to"], f"backup of range {rng}", self.max_bytes, self.configure)
        self.links[rng] = link = Link(rng, order["to"], order["gen"], epoch, channel)
        self._send_state(link, state)

    def _send_state(self, link: Link, state: Callable[[], tuple[dict[str, np.ndarray], dict]]) -> None:
        arrays, meta = state()
        header = {"op": P.STATE, "job": self.job, "from": self.sender, "range": link.rng, "epoch": link.epoch,
                  "gen": link.gen, "clock": 0, "lo": meta["lo"], "hi": meta["hi"], "parts": len(arrays)}
        for i, (name, array) in enumerate(arrays.items()):
            last = i == len(arrays) - 1
            link.state_seq = link.channel.send(dict(header, part=i, name=name, **({"body": meta} if last else {})),
                                               (array,))
        link.synced = link.broken = False
        log.info("range %d: sending its state (%d updates) to its backup at %s (#%d)", link.rng,
                 meta.get("updates", 0), link.target, link.gen)

    def forward(self, rng: int, worker: int, clock: int, lo: int, hi: int, grad: np.ndarray, read_version,
                keys: spans.Spans | None = None) -> int | None:
        """Send one applied push to the range's backup; the seq to hold replies on (None: no
        backup). A push by rows (`keys`, `grad` their packed values) goes on by rows."""
        link = self.links.get(rng)
        if link is None:
            return None
        header = {"op": P.REPLICATE, "job": self.job, "from": self.sender, "range": rng, "epoch": link.epoch,
                  "gen": link.gen, "worker": worker, "clock": clock, "lo": lo, "hi": hi, "read_version": read_version}
        if keys is not None:
            header["grad_spans"] = spans.pack(keys)
        seq = link.channel.send(header, (grad,))
        link.waiting[seq] = []
        link.pushes[(worker, clock, lo, hi)] = seq
        self.forwarded += 1
        return seq

    def in_flight(self, rng: int, worker: int, clock: int, lo: int, hi: int) -> int | None:
        """The seq a push is held on, if its first copy still waits for the backup."""
        link = self.links.get(rng)
        seq = link.pushes.get((worker, clock, lo, hi)) if link is not None else None
        return seq if seq is not None and seq in link.waiting else None

    def hold(self, rng: int, seq: int, release: Release) -> None:
        self.links[rng].waiting.setdefault(seq, []).append(release)

    def on_replies(self, link: Link) -> bool:
        """Take the backup's answers: release what it acknowledged. False if it said we were
        deposed (the caller stands down from the range)."""
        while self.links.get(link.rng) is link:
            try:
                msg = recv(link.channel.sock, router=False, max_bytes=self.max_bytes, flags=zmq.NOBLOCK)
            except zmq.Again:
                return True
            except WireError:
                continue
            if msg.op == P.ERROR:
                if msg.header.get("deposed"):
                    log.warning("range %d: the backup refused a push: %s", link.rng, msg.header.get("reason"))
                    return False
                if not link.broken:
                    log.warning("range %d: the backup refused: %s; holding replies until it has our state",
                                link.rng, msg.header.get("reason"))
                link.broken = True
            elif msg.seq == link.state_seq:
                link.synced = True  # it holds every push applied before the state: release their replies
                link.release([s for s in link.waiting if s <= msg.seq], ok=True)
            else:  # the backup applied this push (its first part of the state, if not one)
                link.release([msg.seq], ok=True)
        return True

    def stand_down(self, rng: int) -> None:
        """We no longer serve `rng`: every reply held for it becomes a refusal."""
        link = self.links.get(rng)
        if link is not None:
            self._close(link, ok=False)

    def _close(self, link: Link, ok: bool) -> None:
        if link.waiting:
            log.warning("range %d: %s %d held replies", link.rng, "releasing" if ok else "refusing",
                        sum(len(v) for v in link.waiting.values()))
        link.release(list(link.waiting), ok)
        link.channel.close()
        del self.links[link.rng]

    def close(self) -> None:
        for link in list(self.links.values()):
            link.channel.close()
        self.links.clear()
