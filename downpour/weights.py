"""A run's weights after the fact, by PyTorch parameter name: whatever way the run ended.

Every shard overwrites one checkpoint file atomically (`checkpoints/shard-R.npz`, checksummed),
so a run that finished, was stopped, crashed or was killed with its launcher has, for every
shard, its last complete checkpoint. Put together by the job's layout (the model the run's
`config.yaml` describes, cut into the run's shard count), they are the whole model, and each
shard's metadata says which clock its part comes from.

A run that finished has also the weights its evaluator scored (`model/weights.npz`): those are
the ones its summary's metrics describe (with early stopping, the best seen), so they are
preferred, as long as the checkpoints beside them belong to the same job (not to a later,
resumed run that was killed).
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib

import numpy as np

from downpour.ps import checkpoint, export
from downpour.ps import config as job_config
from downpour.ps.layout import Layout, make_layout

from .control import JobError

Named = dict[str, np.ndarray]
SOURCES = ("auto", "evaluated", "checkpoints")


@dataclasses.dataclass
class ShardCheckpoint:
    """One shard's last checkpoint: where its weights come from."""

    rank: int
    path: pathlib.Path
    meta: dict
    weights: np.ndarray
    mode: str = "async"

    @property
    def clock(self) -> int:
        """Every worker's pushes below this clock are in these weights (bsp: the clocks applied;
        a push of a later clock may be in too, under async and ssp)."""
        if self.mode == "bsp":
            return int(self.meta.get("applied_clock", 0))
        clocks = [*self.meta.get("clocks", {}).values(), *self.meta.get("departed", {}).values()]
        return min(clocks, default=0)

    def describe(self) -> str:
        clocks = {**self.meta.get("departed", {}), **self.meta.get("clocks", {})}
        per_worker = ", ".join(f"worker-{w} {c}" for w, c in sorted(clocks.items(), key=lambda kv: int(kv[0])))
        return (f"shard-{self.rank}: clock {self.clock} ({per_worker or 'no pushes yet'}), "
                f"{self.meta.get('updates', 0)} updates, job {self.meta.get('job_id', '?')}, {self.path}")


def run_config(run_dir: str | os.PathLike) -> dict:
    path = pathlib.Path(run_dir) / "config.yaml"
    if not path.exists():
        raise JobError(f"{run_dir}: not a run directory (no config.yaml)")
    return job_config.load(path)


def layout_of(cfg: dict) -> Layout:
    """The job's layout, from its config: the model built once (a plug-in's too), cut into its shards."""
    from downpour.worker.job import build_model, load_data
    net = build_model(cfg, None if "factory" in cfg["model"] else load_data(cfg))
    return make_layout([(name, p.data.shape) for name, p in net.named_parameters()], cfg["shards"]["count"])


def shard_checkpoints(run_dir: str | os.PathLike, cfg: dict) -> list[ShardCheckpoint]:
    """Every shard's last complete checkpoint; JobError naming each shard that has none."""
    found, missing = [], []
    for rank in range(cfg["shards"]["count"]):
        path = pathlib.Path(run_dir) / "checkpoints" / f"shard-{rank}.npz"
        try:
            arrays, meta = checkpoint.load(path)
        except checkpoint.CheckpointError as err:
            missing.append(f"shard-{rank}: {err}")
            continue
        found.append(ShardCheckpoint(rank, path, meta, arrays["weights"], cfg["consistency"]["mode"]))
    if missing:
        raise JobError(f"{run_dir}: not every shard has a checkpoint to read: " + "; ".join(missing))
    return found


def from_checkpoints(run_dir: str | os.PathLike, cfg: dict | None = None) -> tuple[Named, list[ShardCheckpoint]]:
    """The whole model from the shards' last checkpoints, by parameter name, and where each
    shard's part comes from."""
    cfg = cfg or run_config(run_dir)
    layout = layout_of(cfg)
    pieces = shard_checkpoints(run_dir, cfg)
    flat = np.empty(layout.total, np.float32)
    for piece in pieces:
        lo, hi = layout.ranges[piece.rank]
        if piece.meta.get("layout") not in (None, layout.fingerprint()) or piece.weights.shape != (hi - lo,):
            raise JobError(f"{piece.path} was written for another model or shard count than {run_dir}/config.yaml")
        flat[lo:hi] = piece.weights
    return export.unflatten(flat, layout), pieces


def evaluated(run_dir: str | os.PathLike, cfg: dict) -> Named | None:
    """The weights the evaluator scored at the end, if the run finished and no later run
    (a resumed one) has written checkpoints since."""
    run_dir = pathlib.Path(run_dir)
    path, summary = run_dir / "model" / "weights.npz", run_dir / "summary.json"
    if not path.exists() or not summary.exists():
        return None
    s = json.loads(summary.read_text())
    if s.get("status") != "done":
        return None
    for rank in range(cfg["shards"]["count"]):
        ckpt = run_dir / "checkpoints" / f"shard-{rank}.npz"
        if ckpt.exists():
            try:
                _, meta = checkpoint.load(ckpt)
            except checkpoint.CheckpointError:
                continue
            if meta.get("job_id") not in (None, s.get("job_id")):
                return None
    return export.load(path)


@dataclasses.dataclass
class Final:
    """A run's weights once it is over, which of SOURCES they come from, and lines that say so."""

    named: Named
    source: str
    provenance: list[str]
    evaluated_exists: bool


def final(run_dir: str | os.PathLike, source: str = "auto") -> Final:
    """A run's weights once it is over. `auto`: the evaluated weights if the run finished,
    else the shards' last checkpoints; `evaluated` or `checkpoints` to insist on one."""
    if source not in SOURCES:
        raise ValueError(f"source: expected one of {', '.join(SOURCES)}, got {source!r}")
    cfg = run_config(run_dir)
    named = evaluated(run_dir, cfg)
    if named is not None and source != "checkpoints":
        line = f"the weights the evaluator scored at the end of the run ({run_dir}/model/weights.npz)"
        return Final(named, "evaluated", [line], True)
    if source == "evaluated":
        raise JobError(f"{run_dir}: no evaluated weights (the run did not finish, or a later run "
                       f"wrote its checkpoints); export from the checkpoints instead")
    from_shards, pieces = from_checkpoints(run_dir, cfg)
    return Final(from_shards, "checkpoints", [piece.describe() for piece in pieces], named is not None)


def export_run(run_dir: str | os.PathLike, fmt: str = "npz", out: str | os.PathLike | None = None,
               source: str = "auto") -> tuple[pathlib.Path, list[str]]:
    """Write a run's weights by PyTorch parameter name (npz or safetensors); return the file
    written and lines that say where the weights come from. By default the file is
    RUN_DIR/model/weights.FORMAT, or model/checkpoints.FORMAT for checkpoints of a run whose
    evaluated weights are there: those are never overwritten with other weights."""
    if fmt not in export.FORMATS:
        raise ValueError(f"format: expected one of {', '.join(export.FORMATS)}, got {fmt!r}")
    weights = final(run_dir, source)
    stem = "checkpoints" if weights.source == "checkpoints" and weights.evaluated_exists else "weights"
    target = pathlib.Path(out) if out is not None else pathlib.Path(run_dir) / "model" / f"{stem}.{fmt}"
    return export.save(target, weights.named, fmt), weights.provenance


def check_resumable(run_dir: str | os.PathLike, cfg: dict) -> list[ShardCheckpoint]:
    """Every shard of the run has a checkpoint to resume from; else JobError, before anything starts."""
    try:
        return shard_checkpoints(run_dir, cfg)
    except JobError as err:
        raise JobError(f"cannot resume: {err}") from None
