"""Shared test configuration."""

# The pytester fixture runs pytest on a scratch project (tests/test_fakebus.py checks the fixtures plugin).
pytest_plugins = ["pytester"]


import pytest  # noqa: E402

from tests.helpers import skip_without_kvm  # noqa: E402


@pytest.fixture(params=[pytest.param("kvm", marks=pytest.mark.kvm), "tcg"])
def accel(request: pytest.FixtureRequest) -> str:
    """The accelerator a guest test runs on: ``kvm`` (skipped, with the reason, without /dev/kvm) or ``tcg``."""
    if request.param == "kvm":
        skip_without_kvm()
    return str(request.param)
