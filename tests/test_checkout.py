"""Python started in the repository's root finds the checkout's `downpour/` first (the working
directory leads sys.path): the face and every package beneath it must still import, whether or
not the checkout is installed, so that a newcomer's `python -m downpour` or a script beside the
README works as it does anywhere else."""
from __future__ import annotations

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Drop the finders an (editable) install adds, as if the package were installed elsewhere or not at all.
WITHOUT_INSTALL = "import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]; "


def run_in_root(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", WITHOUT_INSTALL + code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_packages_beneath_the_face_import_from_the_checkouts_root():
    out = run_in_root("import downpour.model.nn, downpour.ps.protocol, downpour.worker.loop; "
                      "print(downpour.ps.protocol.__file__)")
    assert pathlib.Path(out.strip()) == ROOT / "ps" / "protocol.py"


def test_the_face_launch_and_the_command_line_resolve_from_the_checkouts_root():
    out = run_in_root("import downpour; print(downpour.launch.__module__, downpour.ConfigError.__module__); "
                      "from downpour.ps.cli import main")
    assert out.split() == ["downpour.job", "downpour.ps.schema_nodes"]
