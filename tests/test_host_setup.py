"""scripts/test-host-setup, the first step of README's test command, and .ci/run running that command.

The script runs against stand-ins for ``dpkg-query``, ``apt-get`` and ``id`` (the only
commands it runs), so these tests install nothing and need neither root nor Debian.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "test-host-setup"
PACKAGES = ["binutils", "cmake", "gcc", "libc6-dev", "linux-libc-dev", "make", "patch", "seabios"]

# Says "install ok installed" for the packages in $INSTALLED, fails as dpkg-query does for the rest.
DPKG_QUERY = """#!/bin/sh
for package; do :; done
case " $INSTALLED " in
  *" $package "*) printf 'install ok installed' ;;
  *) echo "dpkg-query: no packages found matching $package" >&2; exit 1 ;;
esac
"""
APT_GET = '#!/bin/sh\necho "apt-get $*" >> "$CALLS"\n'
ID = '#!/bin/sh\necho "$FAKE_UID"\n'


def setup(tmp_path: Path, installed: list[str], uid: int = 0,
          apt: bool = True) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run the script with only the stand-ins on PATH: its result and the apt-get calls it made."""
    stubs = tmp_path / "bin"
    stubs.mkdir()
    commands = {"dpkg-query": DPKG_QUERY, "id": ID, **({"apt-get": APT_GET} if apt else {})}
    for name, text in commands.items():
        (stubs / name).write_text(text)
        (stubs / name).chmod(0o755)
    calls = tmp_path / "calls"
    calls.touch()
    env = {"PATH": str(stubs), "INSTALLED": " ".join(installed), "FAKE_UID": str(uid), "CALLS": str(calls)}
    result = subprocess.run(["/bin/sh", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=60)
    return result, calls.read_text().splitlines()


def test_as_root_it_updates_then_installs_only_the_missing_packages(tmp_path: Path) -> None:
    result, calls = setup(tmp_path, installed=["binutils", "gcc", "libc6-dev"])
    assert result.returncode == 0, result.stderr
    assert calls == ["apt-get update -qq",
                     "apt-get install -y -qq --no-install-recommends cmake linux-libc-dev make patch seabios"]


def test_with_every_package_installed_it_installs_nothing(tmp_path: Path) -> None:
    result, calls = setup(tmp_path, installed=PACKAGES)
    assert (result.returncode, result.stderr, calls) == (0, "", [])


def test_without_root_it_names_what_is_missing_installs_nothing_and_succeeds(tmp_path: Path) -> None:
    result, calls = setup(tmp_path, installed=["gcc"], uid=1000)
    assert result.returncode == 0
    assert calls == []
    assert "not root" in result.stderr and "binutils cmake libc6-dev linux-libc-dev make patch seabios" in result.stderr


def test_without_apt_get_it_installs_nothing_and_succeeds(tmp_path: Path) -> None:
    result, calls = setup(tmp_path, installed=[], apt=False)
    assert result.returncode == 0
    assert "no apt-get" in result.stderr


def test_the_script_is_executable_as_readme_calls_it() -> None:
    assert os.access(SCRIPT, os.X_OK)


def readme_test_command() -> str:
    """The command after README's "run the tests" comment, in "The two commands"."""
    readme = (REPO / "README.md").read_text()
    match = re.search(r"^# [^\n]*run the tests\n(.+)$", readme, re.M)
    assert match, "README's test command not found"
    return match.group(1)


def test_readme_test_command_sets_the_host_up_first() -> None:
    assert readme_test_command().startswith("scripts/test-host-setup && ")


def test_ci_runs_exactly_readme_test_command() -> None:
    lines = [line for line in (REPO / ".ci" / "run").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    assert lines[-1] == readme_test_command()
