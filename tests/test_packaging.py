"""What ``pip install`` ships: every vmcore package, and the built-in devices under vmcore's own name.

The devices live in the repository folder ``devices/`` but install as ``vmcore_devices``
(pyproject.toml maps the one to the other), so that vmcore claims no generic top-level
name in site-packages.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.helpers import CHILD_TIMEOUT, REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]


def test_every_package_folder_is_listed_for_setuptools() -> None:
    # The list is explicit (the devices folder installs under another name), so a new
    # subpackage must be added by hand: this is the reminder.
    folders = {".".join(init.parent.relative_to(REPO).parts) for init in (REPO / "vmcore").rglob("__init__.py")}
    assert set(SETUPTOOLS["packages"]) == folders | {"vmcore_devices"}


def test_the_devices_folder_installs_as_vmcore_devices() -> None:
    assert SETUPTOOLS["package-dir"] == {"vmcore_devices": "devices"}


def test_every_builtin_entry_point_names_a_vmcore_devices_module() -> None:
    modules = PYPROJECT["project"]["entry-points"]["vmcore"].values()
    assert sorted(modules) == sorted(f"vmcore_devices.{p.stem}" for p in (REPO / "devices").glob("*.py")
                                     if p.stem != "__init__")


def test_the_installed_entry_points_are_the_renamed_ones() -> None:
    installed = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="vmcore")
                 if ep.dist is not None and ep.dist.name == "vmcore"}
    assert installed == PYPROJECT["project"]["entry-points"]["vmcore"]


def test_no_source_imports_the_devices_folder_by_its_folder_name() -> None:
    # ``import devices`` works only with the repository on sys.path; installed, it is another project's.
    pattern = re.compile(r"^\s*(from|import)\s+devices\b", re.M)
    offenders = [str(path.relative_to(REPO)) for folder in ("vmcore", "devices", "tests", "bench")
                 for path in (REPO / folder).rglob("*.py") if pattern.search(path.read_text(encoding="utf-8"))]
    assert offenders == []


def _outside_the_repository(folder: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """``python ARGV`` from ``folder`` with nothing added to sys.path: what an installed vmcore sees."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return subprocess.run([sys.executable, *argv], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=CHILD_TIMEOUT, check=True)


def test_outside_the_repository_the_builtins_import_as_vmcore_devices_and_devices_is_not_ours(
        tmp_path: Path) -> None:
    code = ("import importlib.util, vmcore_devices.uart\n"
            "print(vmcore_devices.uart.__name__)\n"
            "spec = importlib.util.find_spec('devices')\n"
            "print(spec.origin if spec else None)\n")
    name, devices = _outside_the_repository(tmp_path, "-c", code).stdout.splitlines()
    assert name == "vmcore_devices.uart"
    assert devices == "None" or not devices.startswith(str(REPO)), devices  # another project's may exist


def test_outside_the_repository_vmcore_devices_lists_every_builtin(tmp_path: Path) -> None:
    listing = _outside_the_repository(tmp_path, "-m", "vmcore", "devices").stdout
    listed = re.findall(r"^(\S+)  \((vmcore_devices\.\w+), plugin ", listing, re.M)
    assert dict(listed) == PYPROJECT["project"]["entry-points"]["vmcore"]


def test_the_console_script_is_the_launcher_python_m_vmcore_runs() -> None:
    # Both go through vmcore.__main__.main, which imports the CLI with the collector paused.
    assert PYPROJECT["project"]["scripts"] == {"vmcore": "vmcore.__main__:main"}
    installed = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="console_scripts")
                 if ep.dist is not None and ep.dist.name == "vmcore"}
    assert installed == PYPROJECT["project"]["scripts"]
