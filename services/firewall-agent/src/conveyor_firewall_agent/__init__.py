"""Conveyor firewall-agent service."""

from importlib.metadata import version

__version__ = version("conveyor-firewall-agent")
