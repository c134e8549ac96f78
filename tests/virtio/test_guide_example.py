"""The device guide's virtio example (docs/device-guide.md, section 10) runs as written."""

from __future__ import annotations

import re

from tests.helpers import REPO
from vmcore.testing import FakeBus


def test_the_guides_virtio_echo_device_and_its_test() -> None:
    text = (REPO / "docs" / "device-guide.md").read_text()
    section = text[text.index("## 10. virtio devices"):]
    device_code, test_code = re.findall(r"```python\n(.*?)```", section, re.S)[:2]
    namespace: dict = {}
    exec(compile(device_code, "device-guide: Echo", "exec"), namespace)
    echo = namespace["Echo"]
    exec(compile(test_code.replace('fake_bus.attach("virtio-echo"', "fake_bus.attach(Echo"), "device-guide: test",
                 "exec"), namespace)
    bus = FakeBus()
    try:
        namespace["Echo"] = echo
        namespace["test_echo"](bus)
    finally:
        bus.close()
