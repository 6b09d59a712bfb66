"""The job config's schema: one declarative table of every setting, its check and its default.

A job spec in the DistBelief / Project Adam style is a small tree of sections. Each node of the
tree (`schema_nodes.py`) knows what it accepts, the phrase that names it in an error, and its
default, so the table in this file is both the validator and the reference of every setting.
`JOB.resolve(raw, "")` turns a raw mapping into the full config or raises `ConfigError`.
"""

from __future__ import annotations

from .schema_nodes import (
    REQUIRED,
    Either,
    Field,
    ListOf,
    Node,
    Nullable,
    Rule,
    Section,
    boolean,
    choice,
    factory,
    integer,
    is_int,
    is_number,
    number,
    plugin,
    text,
    variants,
)

# -- the table ----------------------------------------------------------------------------------

NAMED_DATASETS = ("digits", "fashion_mnist", "mnist1d", "text:jargon", "text:pydoc", "fortunes_langid",
                  "fortunes_topic")

DATASET = Field("one of " + ", ".join(NAMED_DATASETS) + ", or npz:PATH",
                lambda value: isinstance(value, str) and (
                    value in NAMED_DATASETS or (value.startswith("npz:") and bool(value[4:].strip()))))

BETAS = Field("two numbers in [0, 1)",
              lambda value: isinstance(value, (list, tuple)) and len(value) == 2
              and all(is_number(beta) and 0 <= beta < 1 for beta in value),
              [0.9, 0.999], lambda value: [float(beta) for beta in value])


def _adam(weight_decay: float) -> Section:
    return Section({"betas": BETAS, "eps": number(1e-8, low_open=True),
                    "weight_decay": number(weight_decay), "amsgrad": boolean(False)})


_SGD = Section({"momentum": number(0.0, high=1.0), "dampening": number(0.0),
                "nesterov": boolean(False), "weight_decay": number(0.0)},
               rules=(Rule("nesterov", lambda o: not o["nesterov"] or (o["momentum"] > 0 and o["dampening"] == 0),
                           "false unless momentum > 0 and dampening is 0"),))
_ADAGRAD = Section({"lr_decay": number(0.0), "weight_decay": number(0.0),
                    "initial_accumulator_value": number(0.0), "eps": number(1e-10, low_open=True)})
_RATE = {"lr": number(0.01, low_open=True),
         # the rate over the job's planned updates (model/optim/schedule.py)
         "schedule": choice("constant", "linear", "cosine", default="constant"),
         "final_lr": number(0.0)}
# FTRL-proximal (model/optim/sparse_rules.py) has no global rate: alpha sets each coordinate's.
_FTRL = Section({"alpha": number(0.1, low_open=True), "beta": number(1.0), "l1": number(0.0), "l2": number(0.0)})

OPTIMIZER = variants(
    "type", "sgd", _RATE,
    sgd=_SGD, adagrad=_ADAGRAD, adam=_adam(weight_decay=0.0), adamw=_adam(weight_decay=0.01),
    # lazy: a push by rows steps only its rows (model/optim/sparse_rules.py)
    lazy_sgd=_SGD, lazy_adagrad=_ADAGRAD, lazy_adam=_adam(weight_decay=0.0), lazy_adamw=_adam(weight_decay=0.01),
    ftrl=_FTRL,
)
OPTIMIZER.options["ftrl"] = Section({key: node for key, node in OPTIMIZER.options["ftrl"].fields.items()
                                     if key not in _RATE})

_ROLE = choice("coordinator", "shard", "worker")
_FRACTION = number(high=1.0, high_open=False)
_MOMENT = {"at_step": Nullable(integer(0)), "at_seconds": Nullable(number())}
_TARGETING = {"role": Nullable(_ROLE), "rank": Nullable(integer(0)), "op": choice("pull", "push", "any", default="any")}
_ONE_MOMENT = Rule(None, lambda fault: (fault["at_step"] is None) != (fault["at_seconds"] is None),
                   "exactly one of at_step or at_seconds")
_RANK_NEEDS_ROLE = Rule("rank", lambda fault: fault["rank"] is None or fault["role"] is not None,
                        "null unless role is set")


def _message_fault(**fields: Node) -> Section:
    """Faults on messages in flight: aimed at every process, or at one role (and rank), and op."""
    return Section({**fields, **_TARGETING}, rules=(_RANK_NEEDS_ROLE,))


FAULT = variants(
    "kind", REQUIRED, {},
    kill=Section({"role": _ROLE, "rank": integer(0), **_MOMENT}, rules=(_ONE_MOMENT,)),
    delay=_message_fault(seconds=number(), fraction=_FRACTION),
    drop=_message_fault(fraction=_FRACTION),
    duplicate=_message_fault(fraction=_FRACTION),
    corrupt=_message_fault(fraction=_FRACTION),
    partition=Section({"role": _ROLE, "rank": integer(0), **_MOMENT, "seconds": number()}, rules=(_ONE_MOMENT,)),
    nan=Section({"role": choice("worker"), "rank": integer(0), "at_step": integer(0)}),  # a NaN gradient
    # a role answers nothing, heartbeats included, for `seconds`, then goes on (ps/faults.py)
    stall=Section({"role": choice("coordinator", "shard", "worker", "evaluator"), "rank": integer(0), **_MOMENT,
                   "seconds": number(low_open=True)}, rules=(_ONE_MOMENT,)),
)

JOB = Section({
    "name": text(pattern=r"[A-Za-z0-9_.-]+", expected="a name of letters, digits, '_', '.' and '-'"),
    "seed": integer(0, default=0),
    "device": choice("cpu", "cuda", default="cpu"),
    "workers": Section({
        "count": integer(0, default=2),  # built-in workers, started by the launcher
        # workers the job waits for that a user runs (downpour.connect(..., worker=True)); at most
        # protocol.MAX_EXTRA_WORKERS, the ranks a shard accepts beyond workers.count
        "external": Field("an integer in [0, 64]", lambda value: is_int(value) and 0 <= value <= 64, 0),
        "restart": choice("never", "on-failure", default="never"),
        "max_restarts": integer(0, default=3),
    }, shorthand="count", rules=(
        Rule("count", lambda workers: workers["count"] > 0 or workers["external"] > 0,
             "a positive integer (0 only with workers.external > 0)"),)),
    "shards": Section({
        "count": integer(1, default=1),
        "replication": choice(1, 2, default=1),
        # each shard's memory for weights, update-rule state and backups (ps/layout.py); null: no limit
        "memory_mb": Nullable(number(low_open=True)),
    }, shorthand="count", rules=(
        Rule("replication", lambda shards: shards["replication"] == 1 or shards["count"] >= 2,
             "1 when shards.count is 1 (replication 2 needs at least 2 shards)"),)),
    "consistency": Section({
        "mode": choice("async", "ssp", "bsp", default="async"),
        "staleness": integer(0, default=2),
    }),
    "data": Either("factory", factory("dataset", {  # load(**other keys) -> splits: worker/datasets/custom.py
        "factory": plugin("load"),
        "validation": number(0.0, high=1.0),
        "limit_train": Nullable(integer(1)),
    }, "the factory gives the data"), Section({
        "dataset": DATASET,
        "validation": number(0.0, high=1.0),
        "seq_len": integer(1, default=64),
        "limit_train": Nullable(integer(1)),
        "max_chars": Nullable(integer(1)),
        # sparse data sets: n-grams hashed into `buckets` columns (worker/datasets/hashing.py)
        "features": Section({
            "kind": choice("char", "word", default="char"),
            "n_min": integer(1, default=1),
            "n_max": integer(1, default=4),
            "buckets": integer(1, default=1 << 20),
            "values": choice("l2", "count", "binary", default="l2"),
        }, rules=(Rule("n_max", lambda f: f["n_min"] <= f["n_max"] <= 16,
                       lambda f: f"an integer in [n_min, 16] = [{f['n_min']}, 16]"),)),
    })),
    "model": Either("factory", factory("type", {"factory": plugin("build")}, "the factory builds the model"),
                    Section({"type": text()}, free_form=True)),  # build(**other keys) -> nn.Module
    "loss": Nullable(plugin("loss")),  # loss(output, target) -> 0-d tensor; null: cross-entropy
    "optimizer": OPTIMIZER,
    "train": Section({
        "steps": integer(1, default=1000),
        "batch_size": integer(1, default=32),
        "fetch_every": integer(1, default=1),
        "push_every": integer(1, default=1),
        "overlap": boolean(True),  # async only: the next step computes while the round trip travels
        "clip_norm": Nullable(number(low_open=True)),
        "log_every": integer(1, default=50),
    }),
    "eval": Section({
        "every": integer(0, default=0),
        "early_stopping": Nullable(Section({
            "patience": integer(1, default=5),
            "metric": text("val_loss"),
            "mode": choice("min", "max", default="min"),
        })),
    }),
    "target": Nullable(Section({
        "metric": text(),
        "min": Nullable(number(low=None)),
        "max": Nullable(number(low=None)),
    }, rules=(Rule(None, lambda target: (target["min"] is None) != (target["max"] is None),
                   "exactly one of min or max"),))),
    "cluster": Section({
        "host": text("127.0.0.1"),
        "heartbeat_interval": number(0.5, low_open=True),
        "heartbeat_timeout": number(5.0, low_open=True),
        "startup_timeout": number(60.0, low_open=True),
        "request_timeout": number(30.0, low_open=True),
        "max_message_mb": number(512.0, low_open=True),
        "curve": boolean(False),
        "shared_memory": boolean(True),  # workers and shards on one host share arrays, not copies
    }, rules=(Rule("heartbeat_timeout", lambda c: c["heartbeat_timeout"] > c["heartbeat_interval"],
                   lambda c: f"a number greater than heartbeat_interval ({c['heartbeat_interval']:g})"),)),
    "checkpoint": Section({
        # Each shard overwrites its one checkpoint file (atomically) every this many seconds from
        # the moment it starts serving, which is before training starts: the first checkpoint
        # lands within 30 s of the start, and a crash, a kill -9 or a lost machine costs at most
        # 30 s of training. One write (weights and update-rule state, fsynced) took 11 to 43 ms
        # for the shipped configs' shards (jargon_lstm's 4.2 MB the longest), about 0.1% of the
        # interval. 0: only when the job ends or is stopped, and on `downpour checkpoint`.
        "every_seconds": number(30.0),
    }),
    "compression": Section({  # of pushes, see ps/compression.py
        "codec": choice("none", "fp16", "topk", "onebit", "twobit", "sparse", default="none"),
        "ratio": number(0.01, low_open=True, high=1.0, high_open=False),  # topk: the share kept
        "threshold": number(0.5, low_open=True),                          # twobit: the t of +-t
        "error_feedback": boolean(True),                                  # topk, onebit, twobit
        "rows": boolean(False),  # embedding tables travel by the rows a batch uses (ps/spans.py)
        # reads: the change since the reader's view, kept on the shard (ps/reads.py)
        "pull": choice("none", "fp16", "topk", "onebit", "twobit", "sparse", default="none"),
        "pull_full_every": Nullable(integer(1)),         # every Nth read of a reader is a full one
        "pull_memory_mb": number(1024.0, low_open=True),  # per shard, for the views; beyond: plain reads
    }, shorthand="codec", rules=(
        Rule("pull_full_every", lambda c: c["pull_full_every"] is None or c["pull"] != "none",
             "null unless compression.pull names a codec"),)),
    "faults": ListOf(FAULT),
}, expected="a mapping of settings")

PLUGIN_SETTINGS = ("model.factory", "data.factory", "loss")  # a user's code: `ps.config` anchors their files
