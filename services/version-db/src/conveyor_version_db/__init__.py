"""Conveyor version-db service."""

from importlib.metadata import version

__version__ = version("conveyor-version-db")
