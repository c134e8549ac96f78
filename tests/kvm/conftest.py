"""Fixtures for the KVM binding tests: skip kvm-marked tests, with the reason, where KVM is absent."""

from __future__ import annotations

import functools
from collections.abc import Iterator

import pytest

from vmcore.kvm import Kvm, KvmUnavailable


@functools.cache
def kvm_available() -> str | None:
    """None when /dev/kvm opens and validates, else the one-line reason it does not."""
    try:
        Kvm.open().close()
    except KvmUnavailable as exc:
        return str(exc)
    return None


@pytest.fixture(autouse=True)
def _skip_kvm_marked_without_kvm(request: pytest.FixtureRequest) -> None:
    # Autouse in this conftest only, so it never touches other teams' tests.
    if request.node.get_closest_marker("kvm") is not None:
        reason = kvm_available()
        if reason is not None:
            pytest.skip(f"needs /dev/kvm: {reason}")


@pytest.fixture
def kvm() -> Iterator[Kvm]:
    reason = kvm_available()
    if reason is not None:
        pytest.skip(f"needs /dev/kvm: {reason}")
    with Kvm.open() as handle:
        yield handle
