"""Fixtures for every test in the repository (see conveyor.testing.fixtures)."""

pytest_plugins = ["conveyor.testing.fixtures"]
