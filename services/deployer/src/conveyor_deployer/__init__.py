"""Conveyor deployer service."""

from importlib.metadata import version

__version__ = version("conveyor-deployer")
