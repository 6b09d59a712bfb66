"""Loading a user's code by path: a private module name, nothing shadowed, loaded once, and
every failure reported as one error that names the file and the line."""
import os
import random
import sys
import textwrap

import numpy as np
import pytest

from downpour.model import nn
from downpour.worker import plugins
from downpour.worker.plugins import PluginError


def write(directory, name, source):
    path = directory / name
    path.write_text(textwrap.dedent(source))
    return path


def error_of(function, *args, **kwargs) -> str:
    with pytest.raises(PluginError) as caught:
        function(*args, **kwargs)
    return str(caught.value)


@pytest.fixture
def user_dir(tmp_path):
    """A user's directory that also holds files named like our packages, each raising on import."""
    for name in ("model", "ps", "worker", "downpour", "numpy"):
        write(tmp_path, f"{name}.py", f"raise RuntimeError('{name}.py of the user was imported')\n")
    return tmp_path


def test_a_file_is_imported_by_path_under_a_private_name_without_joining_sys_path(user_dir):
    path = write(user_dir, "mynet.py", """\
        import numpy as np
        from downpour.model import nn

        def build(width=3):
            return nn.Linear(2, width)
    """)
    before = list(sys.path)
    build = plugins.load(f"{path}:build", "model.factory")
    assert build.__module__.startswith("downpour_user.mynet_")
    assert sys.modules[build.__module__].__file__ == str(path)
    assert sys.path == before and str(user_dir) not in sys.path
    assert plugins.load(f"{path}:build", "model.factory") is build  # loaded once per process
    assert build(width=4).weight.shape == (4, 2)


def test_a_file_changed_on_disk_is_loaded_again(tmp_path):
    path = write(tmp_path, "mynet.py", "def width():\n    return 1\n")
    assert plugins.load(f"{path}:width", "model.factory")() == 1
    path.write_text("def width():\n    return 2\n")
    os.utime(path, ns=(1, 10**18))  # a later modification time, whatever the clock's resolution
    assert plugins.load(f"{path}:width", "model.factory")() == 2


def test_two_files_of_one_name_in_two_directories_are_two_modules(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    write(first, "mynet.py", "def which():\n    return 'a'\n")
    write(second, "mynet.py", "def which():\n    return 'b'\n")
    which_a = plugins.load(f"{first}/mynet.py:which", "loss")
    which_b = plugins.load(f"{second}/mynet.py:which", "loss")
    assert (which_a(), which_b()) == ("a", "b")


def test_a_module_reference_imports_an_importable_package(tmp_path, monkeypatch):
    package = tmp_path / "mynets"
    package.mkdir()
    write(package, "__init__.py", "")
    write(package, "vision.py", "def build():\n    raise ValueError('not today')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    build = plugins.load("mynets.vision:build", "model.factory")
    message = error_of(plugins.call, build, "mynets.vision:build", "model.factory")
    assert f"{package}/vision.py, line 2, in build: ValueError: not today" in message


def test_a_syntax_error_names_the_file_and_line(tmp_path):
    path = write(tmp_path, "broken.py", "import numpy\n\ndef build(:\n    pass\n")
    message = error_of(plugins.load, f"{path}:build", "model.factory")
    assert f"cannot import {path}: {path}, line 3: SyntaxError" in message
    assert "def build(:" in message


def test_an_exception_at_import_names_the_users_line_not_ours(tmp_path):
    path = write(tmp_path, "broken.py", "import numpy as np\n\nTABLE = np.zeros(3)\nSCALE = TABLE[7]\n")
    message = error_of(plugins.load, f"{path}:build", "model.factory")
    assert f"{path}, line 4, in <module>: IndexError" in message and "SCALE = TABLE[7]" in message
    assert not any(name.startswith("downpour_user.broken_") for name in sys.modules)  # nothing half-loaded kept


def test_exit_at_import_is_an_error_too(tmp_path):
    path = write(tmp_path, "quits.py", "import sys\nsys.exit(2)\n")
    assert f"{path}, line 2, in <module>: SystemExit: 2" in error_of(plugins.load, f"{path}:build", "loss")


def test_a_missing_name_lists_what_the_file_defines_and_a_missing_file_says_where_it_was_looked_for(tmp_path):
    path = write(tmp_path, "mynet.py", "LIMIT = 3\n\ndef make():\n    pass\n\nclass Net:\n    pass\n")
    assert "defines no 'build' (it defines: Net, make)" in error_of(plugins.load, f"{path}:build", "model.factory")
    assert "is a int, not a function" in error_of(plugins.load, f"{path}:LIMIT", "model.factory")
    missing = error_of(plugins.load, f"{tmp_path}/nowhere.py:build", "model.factory")
    assert f"model.factory: {tmp_path}/nowhere.py: no such file" in missing


def test_an_exception_inside_the_factory_names_the_users_last_line_even_when_raised_in_ours(tmp_path):
    path = write(tmp_path, "mynet.py", """\
        from downpour.model import nn

        def build(width):
            first = nn.Linear(2, width)
            return nn.Linear(2, -width) if width > 2 else first
    """)
    build = plugins.load(f"{path}:build", "model.factory")
    message = error_of(plugins.call, build, f"{path}:build", "model.factory", width=3)
    assert f"{path}, line 5, in build: " in message
    assert "return nn.Linear(2, -width) if width > 2 else first" in message


def test_keyword_arguments_are_checked_against_the_factory_before_it_runs(tmp_path):
    path = write(tmp_path, "mynet.py", """\
        calls = []

        def build(width, depth=2):
            calls.append(width)

        def anything(**kwargs):
            return kwargs
    """)
    build = plugins.load(f"{path}:build", "model.factory")
    unknown = error_of(plugins.call, build, f"{path}:build", "model.factory", width=3, detph=1)
    assert unknown == f"model.detph: not a parameter of build ({path}, line 3; it takes: width, depth)"
    missing = error_of(plugins.call, build, f"{path}:build", "model.factory", depth=1)
    assert missing == f"model: build ({path}, line 3) needs model.width"
    assert sys.modules[build.__module__].calls == []
    anything = plugins.load(f"{path}:anything", "data.factory")
    assert plugins.call(anything, f"{path}:anything", "data.factory", n=3) == {"n": 3}


def test_a_function_that_cannot_take_the_arguments_it_is_given_is_named(tmp_path):
    path = write(tmp_path, "mynet.py", "def loss(output):\n    return output\n")
    loss = plugins.load(f"{path}:loss", "loss")
    message = error_of(plugins.call, loss, f"{path}:loss", "loss", 1.0, 2.0)
    assert message == f"loss: loss ({path}, line 1) must take 2 arguments; it takes 1"


def test_seeded_calls_build_the_same_weights_and_leave_the_global_generators_as_they_were():
    np.random.seed(5)
    random.seed(5)
    expected_numpy, expected_python = np.random.random(), random.random()
    np.random.seed(5)
    random.seed(5)
    built = []
    for _ in range(2):
        with plugins.seeded(7):
            built.append((nn.Linear(3, 2).weight.numpy().copy(), np.random.random(), random.random()))
    assert np.array_equal(built[0][0], built[1][0]) and built[0][1:] == built[1][1:]
    assert (np.random.random(), random.random()) == (expected_numpy, expected_python)
