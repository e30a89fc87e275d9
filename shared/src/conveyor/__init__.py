"""Conveyor: the library and CLI every Conveyor service shares."""

__version__ = "0.1.0"
