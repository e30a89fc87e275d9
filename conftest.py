"""Fixtures for every test in the repository (see conveyor.testing.fixtures)."""

import os

from hypothesis import settings

pytest_plugins = ["conveyor.testing.fixtures"]

# Under CI every property-based test sees the same examples run after run, so a
# submission is judged on its code, not on the draw; locally they explore.
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")
