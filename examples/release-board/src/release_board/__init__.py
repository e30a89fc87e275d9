"""The release board: an application of its own on Conveyor's bus (an example, not part of Conveyor)."""

__version__ = "0.1.0"
