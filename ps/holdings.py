"""What a shard holds: the ranges it serves, each at its epoch, the backups it keeps, their
shared-memory segments and their checkpoints.

Which these are is the coordinator's word (`ranges.py`), heard in the shard's heartbeat
replies: a shard serves its own range from the start, may be promoted to serve a range it
backs up, and stands down from a range the moment it learns that the range has moved on
without it. A request for a range is served only by its present primary, at its present
epoch (`serving`); replication between shards is checked the same way (`check_peer`).
Each range served is checkpointed as `checkpoints/shard-R.npz` (R the range, which is the
rank of the shard that served it first), by whoever serves it, and only while the
coordinator's word is fresh: a primary that was stopped and may have been deposed writes
nothing until it has heard again.
"""
from __future__ import annotations

import logging
import pathlib
import time

import numpy as np

from . import checkpoint, shm
from . import protocol as P
from .backups import Backups
from .config import planned_updates
from .incoming import Incoming
from .layout import Layout
from .store import ParameterStore, StalePush
from .wire import Message, WireError

log = logging.getLogger(__name__)


class Holdings:
    def __init__(self, rank: int, layout: Layout, config: dict, job_id: str, workers: list[int],
                 incoming: Incoming, run_dir: pathlib.Path | None):
        self.rank, self.layout, self.config, self.job_id = rank, layout, config, job_id
        self.workers = list(workers)  # the live workers as last heard: new stores start with them
        self.incoming = incoming      # its `local`: whether shared memory is in use
        self.run_dir = run_dir
        self.stores: dict[int, ParameterStore] = {}   # the ranges served
        self.epochs: dict[int, int] = {}              # ... and the epoch of each
        self.backups = Backups(rank)
        self.segments: dict[tuple[int, int], shm.Segment] = {}  # each range's weights, by its bounds
        self.restored_updates: int | None = None
        self.stood_down = 0

    # ---- stores --------------------------------------------------------------------------
    def make_store(self, rng: int, weights: np.ndarray | None = None) -> ParameterStore:
        """A store for range `rng` (at `weights`, or zeros for a state to be loaded into), in
        shared memory when workers on this host may read it there."""
        lo, hi = self.layout.ranges[rng]
        buffer = None
        if self.incoming.local:
            try:
                seg = self.segments.get((lo, hi))
                if seg is None:
                    seg = self.segments[(lo, hi)] = shm.Segment.create(hi - lo, f"{self.job_id}-range{rng}")
                buffer = seg.array
            except OSError as exc:  # e.g. a sandbox that forbids memfd_create: the wire still works
                log.warning("shard %d: no shared memory (%s); every array goes over the wire", self.rank, exc)
                self.incoming.local = False
        mode = self.config["consistency"]
        initial = np.zeros(hi - lo, np.float32) if weights is None else weights
        return ParameterStore(lo, hi, initial, self.config["optimizer"], mode["mode"], mode["staleness"],
                              self.workers, planned_updates(self.config), buffer=buffer)

    def all_stores(self) -> list[ParameterStore]:
        return [*self.stores.values(), *self.backups.stores()]

    def set_live(self, workers: list[int]) -> None:
        self.workers = list(workers)
        for store in self.all_stores():
            store.set_live(workers)

    # ---- who serves what -----------------------------------------------------------------
    def range_of(self, lo: int, hi: int) -> int | None:
        for rng, (a, b) in enumerate(self.layout.ranges):
            if a <= lo <= hi <= b:
                return rng
        return None

    def serving(self, lo: int, hi: int, epoch: int | None) -> tuple[int, ParameterStore]:
        """The range [lo, hi) lies in, and its store, if we serve it at `epoch` (None: any)."""
        rng = self.range_of(lo, hi)
        if rng is None:
            served = ", ".join(f"[{s.lo}, {s.hi})" for s in self.stores.values())
            raise WireError(f"range [{lo}, {hi}) is outside this shard's range {served}")
        if rng not in self.stores:
            raise WireError(f"shard {self.rank} does not serve range {rng}: ask the coordinator which shard "
                            f"does", retry=True, moved=True)
        if epoch is not None and epoch != self.epochs[rng]:
            raise WireError(f"shard {self.rank} serves range {rng} at epoch {self.epochs[rng]}, not {epoch}: "
                            f"ask the coordinator again", retry=True, moved=True, epoch=self.epochs[rng])
        return rng, self.stores[rng]

    def check_peer(self, rng: int, epoch: int) -> None:
        """Refuse replication for a range we serve ourselves: its sender was deposed (or we were)."""
        mine = self.epochs.get(rng)
        if mine is None:
            return
        if epoch < mine:
            raise WireError(f"shard {self.rank} serves range {rng} at epoch {mine}: the sender, at epoch "
                            f"{epoch}, was deposed", deposed=True, epoch=mine)
        raise WireError(f"shard {self.rank} serves range {rng} at epoch {mine}, not {epoch}", retry=True)

    def from_primary(self, msg: Message) -> bool:
        """Take a replicated push or a part of a range's state, for a backup we hold (a
        WireError says why not). Whether it completed a backup's state."""
        h = msg.header
        self.check_peer(h["range"], h["epoch"])
        if msg.op == P.STATE:
            return self.backups.state_part(msg, self.make_store)
        store = self.backups.receiving(msg)
        if not store.lo <= h["lo"] <= h["hi"] <= store.hi:
            raise WireError(f"range [{h['lo']}, {h['hi']}) is outside range {h['range']}")
        grad, keys = self.incoming.gradient(msg, h["lo"], h["hi"])
        try:
            store.push(h["worker"], h["clock"], h["lo"], h["hi"], grad, h.get("read_version"), keys)
        except StalePush as exc:
            raise WireError(str(exc)) from None
        return False

    def serve(self, rng: int, epoch: int, store: ParameterStore) -> None:
        self.stores[rng], self.epochs[rng] = store, epoch

    def stand_down(self, rng: int, why: str) -> None:
        """Stop serving `rng` at once (its segment stays, for whichever store of it comes next)."""
        self.stores.pop(rng)
        epoch = self.epochs.pop(rng)
        self.stood_down += 1
        log.warning("shard %d stood down from range %d (epoch %d): %s", self.rank, rng, epoch, why)

    # ---- checkpoints ---------------------------------------------------------------------
    def checkpoint_path(self, rng: int) -> pathlib.Path | None:
        return self.run_dir / "checkpoints" / f"shard-{rng}.npz" if self.run_dir else None

    def save(self) -> None:
        """Checkpoint every range we serve."""
        for rng, store in self.stores.items():
            path = self.checkpoint_path(rng)
            if path is None:
                return
            arrays, meta = store.state_dict()
            meta.update(rank=self.rank, range=rng, epoch=self.epochs[rng], job_id=self.job_id,
                        layout=self.layout.fingerprint(), time=time.time())
            checkpoint.save(path, arrays, meta)

    def restore(self) -> None:
        """Load the checkpoint of every range we serve that has one (a restart, or `--resume`)."""
        for rng, store in self.stores.items():
            path = self.checkpoint_path(rng)
            if path is None or not path.exists():
                continue
            arrays, meta = checkpoint.load(path)
            if meta.get("layout") != self.layout.fingerprint():
                raise RuntimeError(f"checkpoint {path} was written for another model or shard count")
            store.load_state_dict(arrays, meta)
            self.restored_updates = (self.restored_updates or 0) + store.updates_applied
            log.info("shard %d restored from %s: range %d, %d updates", self.rank, path, rng, store.updates_applied)

    # ---- figures -------------------------------------------------------------------------
    def figures(self) -> dict:
        """What the heartbeat says of the stores: totals over the ranges served, and per range."""
        served = list(self.stores.values())
        read, pushed = {}, {}
        for s in served:
            for k, v in s.consistency.staleness_seen.items():
                read[str(k)] = read.get(str(k), 0) + v
            for k, v in s.push_staleness.items():
                pushed[str(k)] = pushed.get(str(k), 0) + v
        return {"pushes": sum(s.pushes_applied for s in served), "duplicates": sum(s.duplicates for s in served),
                "updates": sum(s.updates_applied for s in served),
                # keys served, keys stepped (a push by rows counts its own), bytes of weights and
                # rule state of every range held, backups included
                "keys": sum(s.hi - s.lo for s in served), "key_updates": sum(s.key_updates for s in served),
                "bytes": sum(s.nbytes for s in self.all_stores()),
                "clock": min((s.consistency.min_clock() for s in served), default=0),
                "ranges": {str(r): s.updates_applied for r, s in self.stores.items()},
                "range_pushes": {str(r): s.pushes_applied for r, s in self.stores.items()},
                "backups": self.backups.report(), "stood_down": self.stood_down,
                "restored_updates": self.restored_updates,
                "read_staleness": dict(sorted(read.items(), key=lambda kv: int(kv[0]))),
                "push_staleness": dict(sorted(pushed.items(), key=lambda kv: int(kv[0])))}
