"""Conveyor changelog-listener service."""

from importlib.metadata import version

__version__ = version("conveyor-changelog-listener")
