"""The job config: defaults, shorthands, overrides, every kind of error, and the YAML round trip."""

import pickle
import textwrap

import msgpack
import pytest

from downpour.ps.config import ConfigError, apply_overrides, dump, get, load, resolve

MINIMAL = {"name": "digits-mlp", "data": {"dataset": "digits"}, "model": {"type": "mlp"}}


def with_(**sections):
    return {**MINIMAL, **sections}


def error_of(raw, overrides=()) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        resolve(raw, overrides)
    return caught.value


def write(tmp_path, text, name="job.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


# -- defaults and shorthands --------------------------------------------------------------------

def test_a_minimal_config_gets_every_default_filled_in():
    cfg = resolve(MINIMAL)
    assert cfg["seed"] == 0 and cfg["device"] == "cpu"
    assert cfg["workers"] == {"count": 2, "external": 0, "restart": "never", "max_restarts": 3}
    assert cfg["shards"] == {"count": 1, "replication": 1, "memory_mb": None}
    assert cfg["consistency"] == {"mode": "async", "staleness": 2}
    assert cfg["data"] == {"dataset": "digits", "validation": 0.0, "seq_len": 64,
                           "limit_train": None, "max_chars": None,
                           "features": {"kind": "char", "n_min": 1, "n_max": 4, "buckets": 1 << 20, "values": "l2"}}
    assert cfg["optimizer"] == {"type": "sgd", "lr": 0.01, "schedule": "constant", "final_lr": 0.0,
                                "momentum": 0.0, "dampening": 0.0, "nesterov": False, "weight_decay": 0.0}
    assert cfg["train"] == {"steps": 1000, "batch_size": 32, "fetch_every": 1, "push_every": 1,
                            "overlap": True, "clip_norm": None, "log_every": 50}
    assert cfg["eval"] == {"every": 0, "early_stopping": None}
    assert cfg["target"] is None
    assert cfg["cluster"] == {"host": "127.0.0.1", "heartbeat_interval": 0.5, "heartbeat_timeout": 5.0,
                              "startup_timeout": 60.0, "request_timeout": 30.0,
                              "max_message_mb": 512.0, "curve": False, "shared_memory": True}
    assert cfg["checkpoint"] == {"every_seconds": 30.0}
    assert cfg["compression"] == {"codec": "none", "ratio": 0.01, "threshold": 0.5, "error_feedback": True,
                                  "rows": False, "pull": "none", "pull_full_every": None, "pull_memory_mb": 1024.0}
    assert cfg["faults"] == []


def test_shorthand_counts_normalise_to_sections():
    cfg = resolve(with_(workers=4, shards=2))
    assert cfg["workers"] == {"count": 4, "external": 0, "restart": "never", "max_restarts": 3}
    assert cfg["shards"] == {"count": 2, "replication": 1, "memory_mb": None}


def test_optimizer_defaults_follow_the_chosen_type():
    adam = resolve(with_(optimizer={"type": "adam"}))["optimizer"]
    adamw = resolve(with_(optimizer={"type": "adamw", "lr": 0.001}))["optimizer"]
    adagrad = resolve(with_(optimizer={"type": "adagrad"}))["optimizer"]
    assert adam == {"type": "adam", "lr": 0.01, "schedule": "constant", "final_lr": 0.0,
                    "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False}
    assert adamw["weight_decay"] == 0.01 and adamw["lr"] == 0.001
    assert adagrad == {"type": "adagrad", "lr": 0.01, "schedule": "constant", "final_lr": 0.0, "lr_decay": 0.0, "weight_decay": 0.0,
                       "initial_accumulator_value": 0.0, "eps": 1e-10}


def test_floats_accept_ints_and_resolve_to_floats():
    cfg = resolve(with_(optimizer={"lr": 1}, cluster={"max_message_mb": 64}))
    assert cfg["optimizer"]["lr"] == 1.0 and type(cfg["optimizer"]["lr"]) is float
    assert type(cfg["cluster"]["max_message_mb"]) is float


def test_model_keys_beyond_type_are_kept_as_given():
    cfg = resolve(with_(model={"type": "cnn", "channels": [8, 16], "head": {"dropout": 0.1}}))
    assert cfg["model"] == {"type": "cnn", "channels": [8, 16], "head": {"dropout": 0.1}}


def test_optional_sections_fill_their_defaults_when_given():
    cfg = resolve(with_(eval={"early_stopping": {"patience": 3}},
                        target={"metric": "test_accuracy", "min": 0.97}))
    assert cfg["eval"]["early_stopping"] == {"patience": 3, "metric": "val_loss", "mode": "min"}
    assert cfg["target"] == {"metric": "test_accuracy", "min": 0.97, "max": None}


def test_faults_fill_the_fields_their_kind_does_not_require():
    cfg = resolve(with_(faults=[{"kind": "kill", "role": "shard", "rank": 0, "at_seconds": 2},
                                {"kind": "drop", "fraction": 0.1}]))
    assert cfg["faults"] == [
        {"kind": "kill", "role": "shard", "rank": 0, "at_step": None, "at_seconds": 2.0},
        {"kind": "drop", "fraction": 0.1, "role": None, "rank": None, "op": "any"},
    ]


def test_named_and_npz_datasets_are_accepted():
    for dataset in ["digits", "fashion_mnist", "mnist1d", "text:jargon", "text:pydoc", "npz:/data/x.npz"]:
        assert resolve(with_(data={"dataset": dataset}))["data"]["dataset"] == dataset


def test_the_resolved_config_is_plain_data_that_survives_msgpack():
    cfg = resolve(with_(model={"type": "mlp", "hidden": (64, 32)}, faults=[{"kind": "drop", "fraction": 0.5}]))
    assert msgpack.unpackb(msgpack.packb(cfg)) == cfg


# -- overrides ----------------------------------------------------------------------------------

def test_overrides_set_scalars_nested_keys_and_lists():
    cfg = resolve(MINIMAL, ["workers=4", "consistency.mode=ssp", "model.hidden=[256,128]", "optimizer.lr=1e-3"])
    assert cfg["workers"]["count"] == 4
    assert cfg["consistency"]["mode"] == "ssp"
    assert cfg["model"]["hidden"] == [256, 128]
    assert cfg["optimizer"]["lr"] == 0.001


def test_an_override_inside_a_shorthand_section_expands_the_shorthand():
    cfg = resolve(with_(workers=2), ["workers.restart=on-failure"])
    assert cfg["workers"] == {"count": 2, "external": 0, "restart": "on-failure", "max_restarts": 3}


def test_an_override_creates_missing_and_null_sections():
    cfg = resolve({**MINIMAL, "eval": None}, ["eval.early_stopping.patience=7", "target={metric: val_loss, max: 0.3}"])
    assert cfg["eval"]["early_stopping"]["patience"] == 7
    assert cfg["target"] == {"metric": "val_loss", "min": None, "max": 0.3}


def test_an_override_can_reach_into_a_list_by_index():
    raw = with_(faults=[{"kind": "drop", "fraction": 0.1}])
    assert resolve(raw, ["faults.0.fraction=0.25"])["faults"][0]["fraction"] == 0.25


def test_apply_overrides_leaves_the_raw_config_untouched():
    raw = with_(workers=2)
    changed = apply_overrides(raw, ["workers.count=3", "data.dataset=mnist1d"])
    assert raw == with_(workers=2)
    assert changed["workers"] == {"count": 3} and changed["data"]["dataset"] == "mnist1d"


def test_an_override_without_equals_sign_is_an_error_naming_it():
    err = error_of(MINIMAL, ["workers4"])
    assert str(err) == "--set: expected dotted.key=value (the value in YAML syntax), got 'workers4'"
    assert err.value == "workers4"


def test_an_override_with_unparsable_value_or_empty_key_is_an_error():
    assert error_of(MINIMAL, ["model.hidden=[256,"]).value == "model.hidden=[256,"
    assert error_of(MINIMAL, ["workers..count=2"]).value == "workers..count=2"


def test_an_override_into_a_value_that_is_not_a_section_or_list_is_an_error():
    assert str(error_of(with_(seed=3), ["seed.x=1"])) == "seed: expected a mapping to set seed.x in, got 3"
    assert str(error_of(with_(faults=[]), ["faults.0.fraction=0.5"])) == \
        "faults.0: expected an index below 0, the length of faults, got '0'"


# -- errors ---------------------------------------------------------------------------------------

def test_wrong_type_names_path_expectation_and_value():
    err = error_of(with_(shards="two"))
    assert str(err) == "shards.count: expected a positive integer, got 'two'"
    assert (err.path, err.value, err.expected) == ("shards.count", "two", "a positive integer")


def test_out_of_range_values_are_errors():
    assert str(error_of(with_(optimizer={"lr": 0}))) == "optimizer.lr: expected a positive number, got 0"
    assert str(error_of(with_(data={"dataset": "digits", "validation": 1.0}))) == \
        "data.validation: expected a number in [0, 1), got 1.0"
    assert str(error_of(with_(compression={"ratio": 0}))) == "compression.ratio: expected a number in (0, 1], got 0"
    assert error_of(with_(train={"steps": 0})).path == "train.steps"
    assert error_of(with_(optimizer={"lr": float("nan")})).path == "optimizer.lr"


def test_booleans_must_be_real_booleans_and_ints_must_not_be_booleans():
    assert str(error_of(with_(cluster={"curve": "yes"}))) == "cluster.curve: expected true or false, got 'yes'"
    assert str(error_of(with_(seed=True))) == "seed: expected a non-negative integer, got true"
    assert error_of(with_(shards={"replication": True})).path == "shards.replication"


def test_unknown_key_suggests_the_nearest_known_key():
    assert str(error_of(with_(optimizer={"momentom": 0.9}))) == \
        "optimizer.momentom: unknown key (did you mean 'momentum'?)"
    assert str(error_of(with_(wokers=3))) == "wokers: unknown key (did you mean 'workers'?)"


def test_unknown_key_without_a_close_match_lists_the_known_keys():
    err = error_of(with_(consistency={"zzz": 1}))
    assert str(err) == "consistency.zzz: unknown key (known keys: mode, staleness)"


def test_a_job_may_wait_for_external_workers_and_then_needs_no_built_in_ones():
    cfg = resolve(with_(workers={"count": 0, "external": 2}))
    assert (cfg["workers"]["count"], cfg["workers"]["external"]) == (0, 2)
    assert str(error_of(with_(workers=0))) == \
        "workers.count: expected a positive integer (0 only with workers.external > 0), got 0"
    assert str(error_of(with_(workers={"count": 1, "external": -1}))) == \
        "workers.external: expected an integer in [0, 64], got -1"
    assert error_of(with_(workers={"external": 65})).path == "workers.external"


def test_checkpoints_are_on_by_default_and_keep_is_no_setting():
    assert resolve(MINIMAL)["checkpoint"]["every_seconds"] == 30.0   # the first within 30 s of the start
    assert str(error_of(with_(checkpoint={"keep": 2}))) == \
        "checkpoint.keep: unknown key (known keys: every_seconds)"


def test_bad_enum_value_lists_the_choices():
    assert str(error_of(with_(consistency={"mode": "asp"}))) == \
        "consistency.mode: expected one of async, ssp, bsp, got 'asp'"
    assert str(error_of(with_(device="gpu"))) == "device: expected one of cpu, cuda, got 'gpu'"


def test_missing_required_settings_are_named():
    assert str(error_of({"data": {"dataset": "digits"}, "model": {"type": "mlp"}})) == \
        "name: required but missing (expected a name of letters, digits, '_', '.' and '-')"
    assert error_of({"name": "x", "model": {"type": "mlp"}}).path == "data.dataset"
    assert error_of({"name": "x", "data": {"dataset": "digits"}}).path == "model.type"


def test_name_and_dataset_must_be_well_formed():
    assert error_of(with_(name="my run")).path == "name"
    err = error_of(with_(data={"dataset": "npz:"}))
    assert err.path == "data.dataset" and "npz:PATH" in err.expected
    assert error_of(with_(data={"dataset": "cifar10"})).value == "cifar10"


def test_an_optimizer_key_of_another_type_says_what_this_type_takes():
    err = error_of(with_(optimizer={"type": "adam", "momentum": 0.9}))
    assert str(err) == "optimizer.momentum: not used by adam (it takes: lr, schedule, final_lr, betas, eps, weight_decay, amsgrad)"


def test_optimizer_values_are_checked_per_type():
    assert error_of(with_(optimizer={"type": "adam", "betas": [0.9]})).path == "optimizer.betas"
    assert error_of(with_(optimizer={"momentum": 1.0})).path == "optimizer.momentum"
    assert str(error_of(with_(optimizer={"type": "rmsprop"}))) == \
        "optimizer.type: expected one of sgd, adagrad, adam, adamw, lazy_sgd, lazy_adagrad, lazy_adam, lazy_adamw, " \
        "ftrl, got 'rmsprop'"


def test_ftrl_takes_the_papers_names_and_no_learning_rate_to_schedule():
    resolved = resolve(with_(optimizer={"type": "ftrl", "alpha": 0.5, "l1": 1.0}))
    assert resolved["optimizer"] == {"type": "ftrl", "alpha": 0.5, "beta": 1.0, "l1": 1.0, "l2": 0.0}
    err = error_of(with_(optimizer={"type": "ftrl", "lr": 0.1}))
    assert str(err) == "optimizer.lr: not used by ftrl (it takes: alpha, beta, l1, l2)"


def test_nesterov_needs_momentum_and_no_dampening():
    assert str(error_of(with_(optimizer={"nesterov": True}))) == \
        "optimizer.nesterov: expected false unless momentum > 0 and dampening is 0, got true"
    assert error_of(with_(optimizer={"nesterov": True, "momentum": 0.9, "dampening": 0.1})).path == "optimizer.nesterov"
    assert resolve(with_(optimizer={"nesterov": True, "momentum": 0.9}))["optimizer"]["nesterov"] is True


def test_bad_fault_specs_are_errors():
    kill = {"kind": "kill", "role": "worker", "rank": 1}
    assert str(error_of(with_(faults=[{"kind": "explode"}]))) == \
        "faults[0].kind: expected one of kill, delay, drop, duplicate, corrupt, partition, nan, stall, got 'explode'"
    assert str(error_of(with_(faults=[kill]))) == \
        f"faults[0]: expected exactly one of at_step or at_seconds, got {kill!r}"
    assert error_of(with_(faults=[{**kill, "at_step": 1, "at_seconds": 1.0}])).path == "faults[0]"
    assert str(error_of(with_(faults=[{"kind": "drop"}]))) == \
        "faults[0].fraction: required but missing (expected a number in [0, 1])"
    assert str(error_of(with_(faults=[{**kill, "at_step": 3, "fraction": 0.5}]))) == \
        "faults[0].fraction: not used by kill (it takes: role, rank, at_step, at_seconds)"
    assert error_of(with_(faults=[{"kind": "delay", "fraction": 0.5, "seconds": 1, "rank": 0}])).path == "faults[0].rank"
    assert error_of(with_(faults=[{"kind": "partition", "role": "shard", "rank": 0, "at_step": 1}])).path == \
        "faults[0].seconds"
    assert error_of(with_(faults=[{"kind": "drop", "fraction": 0.5}, {"kind": "drop", "fraction": 2}])).path == \
        "faults[1].fraction"
    assert str(error_of(with_(faults={"kind": "drop"}))) == "faults: expected a list, got {'kind': 'drop'}"


def test_heartbeat_timeout_must_exceed_the_interval():
    err = error_of(with_(cluster={"heartbeat_interval": 1.0, "heartbeat_timeout": 1.0}))
    assert str(err) == "cluster.heartbeat_timeout: expected a number greater than heartbeat_interval (1), got 1.0"


def test_replication_two_needs_two_shards():
    assert str(error_of(with_(shards={"replication": 2}))) == \
        "shards.replication: expected 1 when shards.count is 1 (replication 2 needs at least 2 shards), got 2"
    assert resolve(with_(shards={"count": 2, "replication": 2}))["shards"]["replication"] == 2


def test_target_takes_exactly_one_of_min_and_max():
    assert error_of(with_(target={"metric": "test_accuracy"})).path == "target"
    assert error_of(with_(target={"metric": "test_accuracy", "min": 0.9, "max": 1.0})).path == "target"
    assert error_of(with_(target={"min": 0.9})).path == "target.metric"


def test_a_section_that_is_not_a_mapping_is_an_error():
    assert str(error_of(with_(cluster=[1, 2]))) == "cluster: expected a mapping, got [1, 2]"
    assert error_of([1, 2]).path == "config"


def test_config_errors_are_value_errors_that_survive_pickling():
    err = error_of(with_(shards="two"))
    copy = pickle.loads(pickle.dumps(err))
    assert isinstance(copy, ValueError)
    assert (str(copy), copy.path, copy.value, copy.expected) == (str(err), err.path, err.value, err.expected)


# -- files ----------------------------------------------------------------------------------------

def test_load_reads_yaml_applies_overrides_and_validates(tmp_path):
    path = write(tmp_path, """\
        name: mlp
        workers: 3
        data: {dataset: mnist1d}
        model: {type: mlp, hidden: [64]}
        optimizer: {type: adamw, lr: 3e-4}
        """)
    cfg = load(path, ["shards=2"])
    assert cfg["workers"]["count"] == 3 and cfg["shards"]["count"] == 2
    assert cfg["optimizer"]["lr"] == pytest.approx(3e-4)


def test_yaml_reads_yes_and_dates_as_strings_not_booleans_and_timestamps(tmp_path):
    path = write(tmp_path, """\
        name: 2024-01-01
        data: {dataset: digits}
        model: {type: mlp}
        cluster: {curve: yes}
        """)
    with pytest.raises(ConfigError, match=r"^cluster.curve: expected true or false, got 'yes'$"):
        load(path)


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path):
    path = write(tmp_path, "name: x\nworkers: 2\ndata: {dataset: digits\nmodel: {type: mlp}\n", name="broken.yaml")
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert str(caught.value).startswith(f"{path}: invalid YAML at line 4")


def test_a_key_given_twice_is_a_yaml_error(tmp_path):
    path = write(tmp_path, "name: x\nworkers: 2\nworkers: 3\n")
    with pytest.raises(ConfigError, match=r"line 3, column 1: found duplicate key 'workers'"):
        load(path)


def test_a_missing_file_or_a_non_mapping_document_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="expected a mapping of settings"):
        load(write(tmp_path, "- name: x\n"))


def test_dump_then_load_gives_back_the_same_config(tmp_path):
    cfg = resolve(with_(
        model={"type": "rnn", "label": "1e3", "flag": "yes", "when": "2024-01-01", "sizes": [[1, 2], [3]]},
        optimizer={"type": "adam", "eps": 1e-10}, target={"metric": "test_accuracy", "min": 0.97},
        faults=[{"kind": "delay", "seconds": 0.5, "fraction": 0.2, "role": "shard", "op": "push"}],
        eval={"early_stopping": {}}), ["workers=4", "workers.restart=on-failure"])
    path = tmp_path / "config.yaml"
    path.write_text(dump(cfg))
    assert load(path) == cfg
    assert "betas: [0.9, 0.999]" in dump(cfg)


# -- get ----------------------------------------------------------------------------------------

def test_get_walks_dotted_paths_and_list_indices():
    cfg = resolve(with_(faults=[{"kind": "drop", "fraction": 0.1}]))
    assert get(cfg, "consistency.mode") == "async"
    assert get(cfg, "faults.0.fraction") == 0.1
    assert get(cfg, "model.hidden", default=[32]) == [32]
    with pytest.raises(KeyError, match="model.hidden"):
        get(cfg, "model.hidden.size")
