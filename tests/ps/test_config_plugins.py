"""A job config that names a user's own model, data and loss: the keys, their errors, and the
paths made absolute against the config file's directory, so every role finds the same file."""
import os
import textwrap

import pytest

from downpour.ps.config import ConfigError, dump, load, resolve

FACTORIES = {"name": "mine", "model": {"factory": "mynet.py:build", "hidden": 64},
             "data": {"factory": "mynet.py:load", "n": 4000}, "loss": "mynet.py:loss"}


def error_of(raw) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        resolve(raw)
    return caught.value


def test_every_other_key_of_a_factory_section_is_kept_for_the_factory(tmp_path):
    cfg = resolve(FACTORIES, base=tmp_path)
    assert cfg["model"] == {"factory": f"{tmp_path}/mynet.py:build", "hidden": 64}
    assert cfg["data"] == {"factory": f"{tmp_path}/mynet.py:load", "validation": 0.0, "limit_train": None, "n": 4000}
    assert cfg["loss"] == f"{tmp_path}/mynet.py:loss"


def test_keys_that_serve_only_named_text_sets_go_to_a_data_factory_as_arguments(tmp_path):
    cfg = resolve({**FACTORIES, "data": {"factory": "mynet.py:load", "seq_len": 32}}, base=tmp_path)
    assert cfg["data"]["seq_len"] == 32 and "max_chars" not in cfg["data"]


def test_built_in_models_and_data_sets_resolve_as_before_with_the_default_loss():
    cfg = resolve({"name": "x", "model": {"type": "mlp"}, "data": {"dataset": "digits"}})
    assert cfg["model"] == {"type": "mlp"}
    assert cfg["data"] == {"dataset": "digits", "validation": 0.0, "seq_len": 64, "limit_train": None,
                           "max_chars": None,
                           "features": {"kind": "char", "n_min": 1, "n_max": 4, "buckets": 1 << 20, "values": "l2"}}
    assert cfg["loss"] is None


def test_files_are_found_from_the_config_files_directory_whatever_the_working_directory(tmp_path, monkeypatch):
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "job.yaml").write_text(textwrap.dedent("""\
        name: mine
        model: {factory: nets/mynet.py:build}
        data: {factory: ../shared/data.py:load}
        loss: /opt/losses/smooth.py:loss
    """))
    monkeypatch.chdir(tmp_path)
    cfg = load("jobs/job.yaml", ["model.hidden=8"])
    assert cfg["model"] == {"factory": f"{jobs}/nets/mynet.py:build", "hidden": 8}
    assert cfg["data"]["factory"] == f"{tmp_path}/shared/data.py:load"
    assert cfg["loss"] == "/opt/losses/smooth.py:loss"


def test_a_module_reference_is_kept_as_written_and_a_home_path_is_expanded(tmp_path):
    cfg = resolve({**FACTORIES, "model": {"factory": "mynets.vision:build"}, "loss": "~/mynet.py:loss"},
                  base=tmp_path)
    assert cfg["model"]["factory"] == "mynets.vision:build"
    assert cfg["loss"] == os.path.expanduser("~/mynet.py") + ":loss"


def test_without_a_config_file_relative_paths_are_taken_from_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve(FACTORIES)["loss"] == f"{tmp_path}/mynet.py:loss"


def test_the_resolved_config_written_to_a_run_directory_loads_back_equal_from_anywhere(tmp_path):
    cfg = resolve(FACTORIES, base=tmp_path / "src")
    run_dir = tmp_path / "runs" / "r1"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(dump(cfg))
    assert load(run_dir / "config.yaml") == cfg


@pytest.mark.parametrize("section, given, message", [
    ("model", {"factory": "mynet.py:build", "type": "mlp"}, "model.type: expected no type with factory"),
    ("data", {"factory": "mynet.py:load", "dataset": "digits"}, "data.dataset: expected no dataset with factory"),
    ("model", {"factory": "mynet.py"}, "model.factory: expected FILE.py:build or package.module:build, "
                                       "got 'mynet.py'"),
    ("model", {"factory": "my net:build"}, "model.factory: expected FILE.py:build"),
    ("data", {"factory": 3}, "data.factory: expected FILE.py:load or package.module:load, got 3"),
    ("loss", "mynet.py:", "loss: expected FILE.py:loss or package.module:loss"),
    ("data", {"factory": "mynet.py:load", "validation": 1.5}, "data.validation: expected a number in [0, 1)"),
    ("model", {"hidden": 3}, "model.type: required but missing"),
])
def test_a_bad_plugin_setting_is_named_with_what_was_expected(section, given, message):
    assert message in str(error_of({**FACTORIES, section: given}))
