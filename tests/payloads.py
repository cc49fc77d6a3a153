"""Pickle payloads that run code when unpickled: each leaves a marker file, the proof that it ran.
Tests check that the project's loaders refuse them and that the marker never appears."""

import builtins
import os


class MkdirPayload:
    """Unpickling this calls os.mkdir(target)."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return os.mkdir, (self.target,)


class SystemPayload:
    """Unpickling this runs the shell command `touch target`."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return os.system, (f"touch {self.target}",)


class OpenPayload:
    """Unpickling this opens (creates) target for writing."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return builtins.open, (self.target, "w")
