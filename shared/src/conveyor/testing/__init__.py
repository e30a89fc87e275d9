"""Pytest fixtures for code built on Conveyor: real brokers and databases, isolated per test.

Enable with ``pytest_plugins = ["conveyor.testing.fixtures"]``.
"""
