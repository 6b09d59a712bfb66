"""`downpour.connect`: the KVWorker of this system, for a training loop of your own.

A `Client` pulls the job's weights by parameter name and, connected as a worker, pushes
gradients by name. It is made of the very parts the built-in workers use: a worker registers
through `worker.session.Session` (rank, heartbeat, the job's config and layout) and talks to
the shards through its `ShardClient`, so the job's consistency model (the SSP/BSP waits) and
its push compression apply to it as to them. Each push is one clock. A read-only client
(`worker=False`) takes the layout and the shard map from the coordinator's status and never
registers: it cannot push, and nobody waits for it.

A Client is not thread-safe: one thread pulls and pushes.
"""
from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping

import numpy as np
import zmq

from downpour.ps import protocol as P
from downpour.ps import spans
from downpour.ps.client import ShardClient
from downpour.ps.layout import Layout, layout_from_dict

from . import control

log = logging.getLogger(__name__)


def connect(run_dir_or_address: str | os.PathLike, worker: bool = False, *, timeout: float = 60.0,
            keys: str | os.PathLike | None = None) -> Client:
    """Connect to a running job (its run directory or its coordinator's tcp://HOST:PORT).

    With `worker=True` this process becomes one of the job's workers (the config's
    `workers.external` says how many the job waits for); `.close()`, or leaving a `with`
    block, says it has finished. `timeout`: how long to wait for the coordinator (and, for a
    read-only client, for every shard to be up); `keys`: the job's CURVE key directory, if it
    uses them and the run directory does not hold them."""
    return Client(run_dir_or_address, worker, timeout=timeout, keys=keys)


class Client:
    """Pull weights and push gradients by parameter name; see `connect`."""

    def __init__(self, target: str | os.PathLike, worker: bool = False, *, timeout: float = 60.0,
                 keys: str | os.PathLike | None = None, give_up: Callable[[], None] | None = None):
        """`give_up` (read-only clients) is called while waiting for shards; it may raise to stop waiting."""
        self.worker = worker
        coordinator = control.address(target, timeout)  # a job just launched: its coordinator is on its way
        self._configure = control.client_keys(target, keys)  # the launcher made them before the coordinator
        self._session = None
        self._shards: ShardClient | None = None
        self._grad: np.ndarray | None = None
        self._closed = False
        self.config: dict | None = None
        if worker:
            from downpour.worker.session import Session
            self._session = Session(coordinator, P.WORKER, None, timeout, self._configure, external=True)
            self.layout: Layout = self._session.layout
            self.job_id: str = self._session.job_id
            self.config = self._session.config
            self.rank: int | None = self._session.rank
            log.info("connected to job %s as %s", self.job_id, self._session.name)
        else:
            status = _wait_for_shards(target, keys, timeout, give_up)
            self.layout, self.job_id, self.rank = layout_from_dict(status["layout"]), status["job_id"], None
            self._ctx = zmq.Context()
            self._shards = ShardClient(self._ctx, self.layout, status["shards"], self.job_id, "client",
                                       timeout=timeout, configure=self._configure, give_up=give_up,
                                       shared_memory=self._configure is None)
        self.shapes: dict[str, tuple[int, ...]] = {p.name: p.shape for p in self.layout.params}
        self._offsets = {p.name: off for p, off in zip(self.layout.params, self.layout.offsets)}

    @property
    def names(self) -> list[str]:
        """The job's parameter names (PyTorch `state_dict()` names), in the layout's order."""
        return list(self.shapes)

    @property
    def clock(self) -> int:
        """This worker's clock: the pushes it has made (0 for a read-only client)."""
        return self._session.clock if self._session is not None else 0

    def _data(self) -> ShardClient:
        """The shard client, made on first use: a worker's waits until the job runs (every
        worker it waits for has connected)."""
        if self._closed:
            raise RuntimeError("this Client is closed")
        if self._shards is None:
            self._shards = self._session.shard_client()
            if self.config["cluster"]["shared_memory"] and self._configure is None:
                self._grad = self._shards.gradient_buffers(1)[0]
            else:
                self._grad = np.zeros(self.layout.total, np.float32)
        return self._shards

    def pull(self, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """The job's current weights by parameter name (all, or only `names`): fresh arrays,
        the caller's to keep. A worker reads at its clock, so SSP and BSP may make it wait."""
        wanted = self.names if names is None else self._known(names)
        shards = self._data()
        flat = np.zeros(self.layout.total, np.float32)
        read = None
        if names is not None:
            read = spans.union(*(spans.whole(self._offsets[n], self._offsets[n] + math.prod(self.shapes[n]))
                                 for n in wanted))
        first = self._session is not None and self._session.step == 0 and self._session.clock == 0
        shards.finish(shards.start(P.PULL, self.clock, None, flat, read_spans=read))
        on_record = shards.resume_clock(self._session.config["consistency"]["mode"] == "bsp") if first else 0
        if on_record > 0:  # a restarted job (resume), or a rejoin, has us further on
            self._session.clock = self._session.step = on_record
            log.info("the shards have us at clock %d: carrying on from there", on_record)
        return {n: flat[self._offsets[n]:self._offsets[n] + math.prod(self.shapes[n])].reshape(self.shapes[n])
                for n in wanted}

    def push(self, grads: Mapping[str, object]) -> None:
        """Push one gradient by parameter name (a missing name is a zero gradient): one clock.
        Arrays, lists or CPU tensors of the parameter's shape; the job's `train.clip_norm` and
        compression apply. Nothing is pushed if a name, shape or value is wrong."""
        if self._session is None:
            raise RuntimeError("a read-only client cannot push: connect with worker=True")
        if not isinstance(grads, Mapping):
            raise TypeError(f"grads: expected a dict of parameter name to array, got {type(grads).__name__}")
        self._known(grads)
        shards = self._data()
        staged = {}
        for name, value in grads.items():
            array = np.asarray(value, dtype=np.float32)
            if array.shape != self.shapes[name]:
                raise ValueError(f"grads[{name!r}]: expected shape {self.shapes[name]}, got {array.shape}")
            if not np.isfinite(array).all():
                raise ValueError(f"grads[{name!r}]: not finite (nan or inf); nothing was pushed")
            staged[name] = array
        grad = self._grad
        grad[:] = 0.0
        for name, array in staged.items():
            grad[self._offsets[name]:self._offsets[name] + array.size] = array.ravel()
        clip = self.config["train"]["clip_norm"]
        if clip:
            from downpour.model import optim
            optim.clip_grad_norm_(grad, clip)
        shards.push(grad, self._session.clock)
        self._session.clock += 1
        self._session.step = self._session.clock

    def _known(self, names: Iterable[str]) -> list[str]:
        names = list(names)
        unknown = [n for n in names if n not in self.shapes]
        if unknown:
            raise KeyError(f"unknown parameter {unknown[0]!r}: this job's parameters are {', '.join(self.names)}")
        return names

    def close(self, finished: bool = True) -> None:
        """Done: a worker says it has finished (or, with `finished=False`, only that it leaves)."""
        if self._closed:
            return
        self._closed = True
        if self._session is None:
            self._shards.close()
            self._ctx.term()
            return
        session = self._session
        over = session.state in P.FINAL_STATES
        if finished and not over:
            session.control.timeout = min(session.control.timeout, 10.0)
            try:
                session.control.done({"clock": session.clock, "step": session.step})
            except (TimeoutError, RuntimeError) as err:
                log.warning("%s: could not say it has finished: %s", session.name, err)
        session.close(leave=not over)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, kind, *_) -> None:
        self.close(finished=kind is None)  # a loop that raised has not finished: it leaves


def _wait_for_shards(target, keys, timeout: float, give_up: Callable[[], None] | None) -> dict:
    """The coordinator's status once every shard range has a server."""
    deadline = time.monotonic() + timeout
    while True:
        status = control.live_status(target, keys)
        if control.is_over(status):
            raise control.JobError(f"{target}: the job is over ({status['state']}: {status.get('reason')})")
        if status.get("shards"):
            return status
        if time.monotonic() > deadline:
            raise TimeoutError(f"{target}: the job's shards were not all up within {timeout:g} s")
        if give_up is not None:
            give_up()
        time.sleep(0.1)
