"""`downpour`: the face of the system. The one place that reaches every layer.

`launch` runs a whole job on this machine; `coordinator`, `shard`, `worker` and `evaluator`
run one role each, exactly as a container on another host does.
"""
from __future__ import annotations

import json
import logging
import pathlib
import signal
import sys

import click

from . import config as job_config

log = logging.getLogger("downpour")


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)


def _load(path: str, overrides: tuple[str, ...]) -> dict:
    try:
        return job_config.load(path, overrides)
    except job_config.ConfigError as err:
        raise click.ClickException(f"{path}: {err}") from None
    except OSError as err:
        raise click.ClickException(f"cannot read {path}: {err.strerror}") from None


def _check_model(cfg: dict) -> list:
    """Build the job's model once (seeded): catches model/data errors before anything starts."""
    if cfg["eval"]["early_stopping"] and not cfg["data"]["validation"]:
        raise click.ClickException("eval.early_stopping: needs a validation split to watch "
                                   "(set data.validation, e.g. 0.1)")
    if cfg["eval"]["early_stopping"] and not cfg["eval"]["every"]:
        raise click.ClickException("eval.early_stopping: needs eval.every > 0 (clocks between evaluations)")
    from downpour.worker import datasets, models, plugins
    from downpour.worker.job import initial_parameters

    from .layout import check_job_memory
    try:
        params = initial_parameters(cfg)
        check_job_memory(cfg, params)
        return params
    except (models.ModelConfigError, datasets.DatasetError, plugins.PluginError, ValueError) as err:
        raise click.ClickException(str(err)) from None


def _check_device(device: str) -> None:
    """A local cluster's workers run here: check now that `device` can be honoured."""
    from downpour.worker.job import select_device
    try:
        select_device(device)
    except RuntimeError as err:
        raise click.ClickException(f"device: {err}") from None
    finally:
        select_device("cpu")


SET = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                   help="Override a config value, e.g. --set workers=4 --set consistency.mode=ssp.")
KEYS = click.option("--keys", "keys_dir", type=click.Path(file_okay=False), envvar="DOWNPOUR_KEYS",
                    help="The job's CURVE key directory (env DOWNPOUR_KEYS): authenticate and encrypt all traffic.")


def _keys(keys_dir: str | None, server: bool):
    """Load the job's CURVE keys, or None when the job runs without them."""
    if not keys_dir:
        return None
    from . import security
    try:
        return security.load(keys_dir, server=server)
    except security.KeysError as err:
        raise click.ClickException(str(err)) from None


def _client_configure(keys_dir: str | None):
    keys = _keys(keys_dir, server=False)
    return keys.configure_client if keys is not None else None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """downpour: a parameter-server training system (Downpour SGD over ZeroMQ)."""


@main.command()
@click.argument("config", type=click.Path(dir_okay=False), required=False)
@click.option("--run-dir", type=click.Path(file_okay=False), help="Where to write the run (default runs/NAME-TIME).")
@click.option("--resume", "resume", type=click.Path(file_okay=False, exists=True),
              help="Resume the job in this run directory from its shards' last checkpoints.")
@SET
@click.option("--quiet", is_flag=True, help="No progress lines.")
@click.option("--parent-fd", type=int, hidden=True,
              help="(downpour.launch) A pipe from the launching process: when it closes, stop the job.")
def launch(config: str | None, run_dir: str | None, resume: str | None, overrides: tuple[str, ...],
           quiet: bool, parent_fd: int | None) -> None:
    """Run a job on a local cluster: coordinator, shards, evaluator and workers as processes.

    This is the launcher process itself; from Python, `downpour.launch` starts it in the background."""
    from downpour import job as api_job
    from downpour import weights

    from . import launcher
    from .progress import Progress
    _setup_logging()
    if (config is None) == (resume is None):
        raise click.UsageError("give a job config, or --resume RUN_DIR (not both)")
    if resume:
        config, run_dir = str(pathlib.Path(resume) / "config.yaml"), resume
    cfg = _load(config, overrides)
    if resume:  # no checkpoint is an error, not a fresh start
        try:
            weights.check_resumable(resume, cfg)
        except api_job.JobError as err:
            raise click.ClickException(str(err)) from None
    _check_model(cfg)
    _check_device(cfg["device"])
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    if parent_fd is not None:
        if run_dir is None:
            raise click.UsageError("--parent-fd needs --run-dir")
        api_job.watch_parent(parent_fd, run_dir)
    progress = None if quiet else Progress(cfg)
    code, path = launcher.launch(cfg, run_dir, progress, resume=resume is not None)
    if progress:
        progress.close()
    summary = path / "summary.json"
    if summary.exists():
        s = json.loads(summary.read_text())
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in s.get("metrics", {}).items())
        click.echo(f"{s['status']}: {metrics or s.get('reason', '')} ({s['wall_seconds']:.1f} s, "
                   f"{s['updates_applied']} updates) -> {path}")
    else:
        click.echo(f"no summary written; logs in {path / 'logs'}", err=True)
    sys.exit(code)


@main.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False))
@click.option("--bind", default="tcp://0.0.0.0:5555", show_default=True)
@click.option("--run-dir", type=click.Path(file_okay=False), default=".", show_default=True)
@click.option("--address-file", type=click.Path(dir_okay=False), help="Write the bound address here once ready.")
@SET
@KEYS
def coordinator(config_path: str, bind: str, run_dir: str, address_file: str | None, overrides: tuple[str, ...],
                keys_dir: str | None) -> None:
    """Run the coordinator role."""
    import zmq

    from . import security
    from .coordinator import Coordinator
    _setup_logging()
    cfg = _load(config_path, overrides)
    keys = _keys(keys_dir, server=True)
    if cfg["cluster"]["curve"] and keys is None:
        raise click.ClickException("cluster.curve is true: give the job's keys with --keys DIR (see `downpour keys`)")
    params = _check_model(cfg)
    pathlib.Path(run_dir).mkdir(parents=True, exist_ok=True)
    ctx = zmq.Context()
    auth = security.start_authenticator(ctx, keys) if keys is not None else None
    try:
        coord = Coordinator(ctx, cfg, params, bind, run_dir, keys.configure_server if keys else None)
    except RuntimeError as err:
        if auth is not None:
            auth.stop()
        ctx.term()
        raise click.ClickException(str(err)) from None
    log.info("coordinator of job %s at %s", coord.job_id, coord.endpoint)
    if address_file:
        tmp = pathlib.Path(address_file + ".tmp")
        tmp.write_text(coord.endpoint + "\n")
        tmp.replace(address_file)
    try:
        code = coord.serve()
    finally:
        coord.close()
        if auth is not None:
            auth.stop()
        ctx.term()
    sys.exit(code)


@main.command()
@click.option("--coordinator", "coordinator_address", required=True, help="tcp://HOST:PORT of the coordinator.")
@click.option("--bind", default="tcp://0.0.0.0:*", show_default=True)
@click.option("--advertise", help="HOST or HOST:PORT peers should dial (default, when bound to 0.0.0.0: this host's "
              "address on the interface that reaches the coordinator).")
@click.option("--rank", type=int, help="Shard rank (default: assigned by the coordinator).")
@click.option("--run-dir", type=click.Path(file_okay=False), help="Where checkpoints go.")
@click.option("--resume", is_flag=True, help="Start from this shard's checkpoint in --run-dir.")
@click.option("--startup-timeout", type=float, default=60.0, show_default=True)
@KEYS
def shard(coordinator_address: str, bind: str, advertise: str | None, rank: int | None,
          run_dir: str | None, resume: bool, startup_timeout: float, keys_dir: str | None) -> None:
    """Run a parameter-server shard."""
    from . import shard as shard_role
    _setup_logging()
    keys = _keys(keys_dir, server=True)
    try:
        code = shard_role.run(coordinator_address, bind, advertise, rank, run_dir, startup_timeout, resume, keys)
    except (RuntimeError, TimeoutError) as err:
        log.error("%s", err)
        code = 1
    sys.exit(code)


@main.command()
@click.option("--coordinator", "coordinator_address", required=True)
@click.option("--rank", type=int, help="Worker rank (default: assigned by the coordinator).")
@click.option("--startup-timeout", type=float, default=60.0, show_default=True)
@KEYS
def worker(coordinator_address: str, rank: int | None, startup_timeout: float, keys_dir: str | None) -> None:
    """Run a training worker."""
    from downpour.worker import loop
    _setup_logging()
    sys.exit(_role(loop.run, coordinator_address, rank, startup_timeout, _client_configure(keys_dir)))


@main.command()
@click.option("--coordinator", "coordinator_address", required=True)
@click.option("--startup-timeout", type=float, default=60.0, show_default=True)
@KEYS
def evaluator(coordinator_address: str, startup_timeout: float, keys_dir: str | None) -> None:
    """Run the evaluator (scores the shards' weights on the test split at the end)."""
    from downpour.worker import evaluator as evaluator_role
    _setup_logging()
    sys.exit(_role(evaluator_role.run, coordinator_address, startup_timeout, _client_configure(keys_dir)))


def _role(run, *args) -> int:
    """Run a role; a start-up that cannot complete ends with one clear line, not a traceback."""
    try:
        return run(*args)
    except (TimeoutError, RuntimeError) as err:
        log.error("%s", err)
        return 1


def _api(call, *args, **kwargs):
    """Call the API (downpour.control, downpour.weights); its errors become one clear line."""
    from downpour.control import JobError
    from downpour.ps.checkpoint import CheckpointError
    try:
        return call(*args, **kwargs)
    except (JobError, CheckpointError) as err:
        raise click.ClickException(str(err)) from None


@main.command()
@click.argument("target")
@click.option("--json", "as_json", is_flag=True, help="Print the raw status as JSON.")
@KEYS
def status(target: str, as_json: bool, keys_dir: str | None) -> None:
    """Show a job's nodes and progress (TARGET: a run directory or tcp://HOST:PORT); for a run
    that is over, how it ended."""
    from downpour import control

    from .progress import status_table
    st = _api(control.status, target, keys_dir)
    click.echo(json.dumps(st, indent=2) if as_json else status_table(st))


@main.command()
@click.argument("target")
@KEYS
def stop(target: str, keys_dir: str | None) -> None:
    """Stop a running job gracefully (shards checkpoint, every process ends)."""
    from downpour import control
    st = _api(control.stop, target, "stopped by `downpour stop`", keys_dir)
    click.echo(f"job {st['state']}")


def _run_dir(path: str) -> pathlib.Path:
    run_dir = pathlib.Path(path)
    if not (run_dir / "config.yaml").exists():
        raise click.ClickException(f"{path}: not a run directory (no config.yaml)")
    return run_dir


def _weights(run_dir: pathlib.Path) -> dict:
    """The run's final weights: the evaluated ones, else every shard's last checkpoint."""
    from downpour import weights
    final = _api(weights.final, run_dir)
    for line in final.provenance:
        click.echo(f"weights: {line}", err=True)
    return final.named


@main.command("export")
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--format", "fmt", type=click.Choice(["npz", "safetensors"]), default="npz", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False),
              help="Where to write (default RUN_DIR/model/weights.FORMAT; model/checkpoints.FORMAT for "
                   "--source checkpoints of a run that has evaluated weights).")
@click.option("--source", type=click.Choice(["auto", "evaluated", "checkpoints"]), default="auto", show_default=True,
              help="auto: the weights the evaluator scored if the run finished, else every shard's last checkpoint.")
def export_cmd(run_dir: str, fmt: str, out: str | None, source: str) -> None:
    """Export a run's weights by PyTorch parameter name (npz or safetensors), whatever way it
    ended (finished, stopped, crashed, killed): says where each shard's weights come from."""
    from downpour import weights
    path = _run_dir(run_dir)
    target, provenance = _api(weights.export_run, path, fmt, out, source)
    for line in provenance:
        click.echo(f"weights: {line}", err=True)
    click.echo(str(target))


@main.command("eval")
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--data", help="Evaluate on another data set (default: the job's).")
@click.option("--split", type=click.Choice(["test", "val"]), default="test", show_default=True)
def eval_cmd(run_dir: str, data: str | None, split: str) -> None:
    """Score a run's exported weights on a data set's test (or validation) split."""
    from downpour.worker import datasets, models, plugins
    from downpour.worker.job import build_job
    path = _run_dir(run_dir)
    cfg = _load(str(path / "config.yaml"), ())
    if data:  # another named data set, in place of the job's named one or its factory
        kept = {k: v for k, v in cfg["data"].items() if k in ("validation", "seq_len", "limit_train", "max_chars")}
        cfg = _load(str(path / "config.yaml"), (f"data={json.dumps({**kept, 'dataset': data})}",))
    try:
        job = build_job(cfg)
    except (models.ModelConfigError, datasets.DatasetError, plugins.PluginError) as err:
        raise click.ClickException(str(err)) from None
    job.net.load_state_dict(_weights(path))
    metrics = job.evaluate(split)
    click.echo(", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))


@main.command("plot")
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--out", type=click.Path(dir_okay=False), help="PNG path (default RUN_DIR/curves.png).")
def plot_cmd(run_dir: str, out: str | None) -> None:
    """Draw loss and metric curves of a run (needs matplotlib: pip install 'downpour[plot]')."""
    from .plot import plot
    try:
        click.echo(str(plot(_run_dir(run_dir), out)))
    except (RuntimeError, FileNotFoundError) as err:
        raise click.ClickException(str(err)) from None


@main.command()
@click.argument("target")
@KEYS
def checkpoint(target: str, keys_dir: str | None) -> None:
    """Ask every shard of a running job to write its checkpoint now."""
    from downpour import control
    _api(control.checkpoint, target, keys_dir)
    click.echo("checkpoint requested")


@main.command()
@click.argument("key_dir", type=click.Path(file_okay=False))
def keys(key_dir: str) -> None:
    """Make a job's CURVE keys in KEY_DIR (secrets 0600) for multi-node deployments."""
    from . import security
    try:
        made = security.generate(key_dir)
    except security.KeysError as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"keys written to {made.directory}; give every role --keys {made.directory} "
               f"(worker hosts need only {security.SERVER_PUBLIC} and {security.CLIENT_SECRET})")


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@SET
def validate(config: str, overrides: tuple[str, ...]) -> None:
    """Check a job config (and build its model once) without starting anything."""
    cfg = _load(config, overrides)
    params = _check_model(cfg)
    size = sum(a.size for _, a in params)
    model = cfg["model"].get("type") or cfg["model"]["factory"]
    data = cfg["data"].get("dataset") or cfg["data"]["factory"]
    external = f" + {cfg['workers']['external']} external" if cfg["workers"]["external"] else ""
    click.echo(f"{config}: ok ({model} with {size:,} parameters on {data}, {cfg['workers']['count']} workers"
               f"{external}, {cfg['shards']['count']} shards, {cfg['consistency']['mode']})")


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@SET
def train(config: str, overrides: tuple[str, ...]) -> None:
    """Train in this one process (no cluster): the reference a distributed run is compared with."""
    import downpour
    _setup_logging()
    cfg = _load(config, overrides)
    done = downpour.train(cfg)
    click.echo(", ".join(f"{k} {v:.4f}" for k, v in done["metrics"].items()) + f" ({done['wall_seconds']:.1f} s)")


if __name__ == "__main__":
    main()
