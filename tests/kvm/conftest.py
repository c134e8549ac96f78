"""Fixtures for the KVM binding tests: skip kvm-marked tests, with the reason, where KVM is absent."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers import kvm_unavailable
from vmcore.kvm import Kvm


@pytest.fixture(autouse=True)
def _skip_kvm_marked_without_kvm(request: pytest.FixtureRequest) -> None:
    # Autouse in this conftest only, so it never touches other teams' tests.
    if request.node.get_closest_marker("kvm") is not None:
        reason = kvm_unavailable()
        if reason is not None:
            pytest.skip(f"needs /dev/kvm: {reason}")


@pytest.fixture
def kvm() -> Iterator[Kvm]:
    reason = kvm_unavailable()
    if reason is not None:
        pytest.skip(f"needs /dev/kvm: {reason}")
    with Kvm.open() as handle:
        yield handle
