"""docs/malformed-profiles.md: every malformed-profile case and the message it gives.

The page is rendered from the case tables in tests/malformed_profiles.py by running every case, so
it cannot say something vmcore no longer says. After changing a message or a case, regenerate it:

    python -m tests.test_malformed_doc --write      # or: ... > docs/malformed-profiles.md
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path

import pytest

from tests.malformed_profiles import (
    ALL_CASES,
    BUILD_ERRORS,
    CASE_FILE,
    HOST_ERRORS,
    MAX_EXTENDS,
    PLUGIN_ERRORS,
    PROFILE_ERRORS,
    Case,
    case_error,
    make_case_dir,
)

DOC = Path(__file__).resolve().parent.parent / "docs" / "malformed-profiles.md"
REGENERATE = "python -m tests.test_malformed_doc --write"

HEADER = f"""\
# Malformed profiles and what vmcore says

Every malformed profile gives one line, `file:line: key: message`, and no traceback: `vmcore check`,
`vmcore run` and `Profile.load`/`Machine.build` all report it the same way. Each row below is a
test (`tests/test_profile.py`, `test_malformed_profile[<case>]`): the profile is written as
`{CASE_FILE}` next to a few helper files (`small.bin`, 16 bytes; `big.bin`, 8 KiB; a directory
`adir`; `loop.yaml`, which extends `{CASE_FILE}`; `bad-base.yaml`, with a 3K slot; `loop.link`, a
symbolic link to itself; `deep/1.yaml` to `deep/{MAX_EXTENDS + 1}.yaml`, each extending the next) and the
message is what vmcore printed. A profile may have at most {MAX_EXTENDS} base profiles below it through
`extends`; a path component may have at most 255 bytes (Linux's `NAME_MAX`).
In the YAML column `\\n` is a line break and `\\t` a tab; paths are shown
relative to the profile's folder.

This page is generated; do not edit it by hand. After changing a message or a case, run
`{REGENERATE}` (`tests/test_malformed_doc.py` fails while the page and the code disagree).
"""

SECTIONS: list[tuple[str, str, str, list[Case]]] = [
    ("load", "Found when the profile is read",
     "`Profile.load` (and `vmcore check`) reports these before any memory is mapped or device built.",
     PROFILE_ERRORS),
    ("build", "Found when the machine is built",
     ("Only a device type, the bus or the loader can see these: `Machine.build` (also run by `vmcore check`) "
      "reports them against the profile line that asked for the thing."),
     BUILD_ERRORS),
    ("plugin", "Found when the machine is built, with a device from a plugin",
     ("No built-in type can put an MMIO region where these cases need one, so they are built with `window`, "
      "a device type defined in `tests/malformed_profiles.py`: 16 bytes of MMIO registers at its `base`. A device's "
      "MMIO region may lie over a memory slot only where a device decodes that memory itself (an overlay, as "
      "the `i440fx`'s PAM segments): elsewhere the memory answers and the device is never reached."),
     PLUGIN_ERRORS),
    ("host", "When the host cannot provide the memory",
     ("A profile may ask for at most 64G of guest memory in all (`VMCORE_MAX_GUEST_MEMORY` changes the "
      "limit; see `more-memory-than-the-limit` above). Within it, the host can still refuse the anonymous "
      "mapping behind a slot (`ENOMEM`: overcommit, `ulimit -v`, a cgroup); the test makes every mapping "
      "over 1M fail."),
     HOST_ERRORS),
]


def show_yaml(text: str | bytes) -> str:
    """A case's file on one line: escapes for line breaks, tabs, backslashes, control and non-UTF-8 bytes."""
    units = [chr(b) if b < 0x80 else f"\\x{b:02x}" for b in text] if isinstance(text, bytes) else list(text)
    special = {"\n": "\\n", "\t": "\\t", "\\": "\\\\"}
    return "".join(
        special.get(u) or (f"\\x{ord(u):02x}" if len(u) == 1 and (ord(u) < 0x20 or ord(u) == 0x7F) else u)
        for u in units
    )


def code(text: str) -> str:
    """Inline code that survives a Markdown table cell."""
    text = text.replace("|", "\\|")
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if longest or text.startswith(" ") or text.endswith(" ") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def message(folder: Path, text: str | bytes, stage: str) -> str:
    """What vmcore says for one case, with the case's folder left out of every path."""
    said = str(case_error(folder, text, stage))
    for prefix in {str(folder), str(folder.resolve())}:
        said = said.replace(prefix + os.sep, "")
    return said


def row(folder: Path, case: Case, stage: str) -> str:
    name, text, _line, _fragments = case
    return f"| {name} | {code(show_yaml(text))} | {code(message(folder, text, stage))} |"


def render() -> str:
    """The whole page, from running every case."""
    parts = [HEADER]
    for stage, title, intro, cases in SECTIONS:
        parts.append(f"\n## {title}\n\n{intro}\n\n| Case | `{CASE_FILE}` | Message |\n|---|---|---|\n")
        with tempfile.TemporaryDirectory() as tmp:
            folder = make_case_dir(Path(tmp))
            parts.extend(row(folder, case, stage) + "\n" for case in cases)
    return "".join(parts)


def test_every_case_is_in_a_section() -> None:
    assert sorted(case[0] for _, _, _, cases in SECTIONS for case in cases) == sorted(c[0] for c, _ in ALL_CASES)


@pytest.mark.parametrize(("case", "stage"), ALL_CASES, ids=[case[0] for case, _ in ALL_CASES])
def test_the_page_has_the_row(tmp_path: Path, case: Case, stage: str) -> None:
    expected = row(make_case_dir(tmp_path), case, stage)
    assert expected in DOC.read_text(encoding="utf-8").splitlines(), f"stale row; run {REGENERATE}"


def test_the_page_is_current() -> None:
    assert DOC.read_text(encoding="utf-8") == render(), f"docs/malformed-profiles.md is stale; run {REGENERATE}"


def test_yaml_is_shown_on_one_line() -> None:
    assert show_yaml("a:\n\tb: 'c|d'\x00\\") == "a:\\n\\tb: 'c|d'\\x00\\\\"
    assert show_yaml(b"\x7fELF\xff\n") == "\\x7fELF\\xff\\n"
    assert code("a|b") == "`a\\|b`"
    assert code("x `y`") == "`` x `y` ``"


def main(argv: list[str]) -> int:
    text = render()
    if argv == ["--write"]:
        DOC.write_text(text, encoding="utf-8")
        print(f"wrote {DOC}", file=sys.stderr)
    elif not argv:
        sys.stdout.write(text)
    else:
        print("usage: python -m tests.test_malformed_doc [--write]", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
