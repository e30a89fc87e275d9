"""dir-watcher: the changelog listener's watcher on a directory of one's own (an example, not part
of Conveyor)."""

__version__ = "0.1.0"
