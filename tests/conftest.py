"""Shared test configuration."""

# The pytester fixture runs pytest on a scratch project (tests/test_fakebus.py checks the fixtures plugin).
pytest_plugins = ["pytester"]
