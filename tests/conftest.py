"""Fixtures shared by the test modules (pytest finds them here; modules do not import each other)."""

from tests.entry_points import entry  # noqa: F401  (runs an entry point in-process or as a subprocess)
