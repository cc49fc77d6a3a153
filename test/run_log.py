"""log.txt: lines printed and appended a block at a time, fsynced, in the official format."""

import os
from pathlib import Path

from errors import UserError


class RunLog:
    """Prints lines and appends them to <OUT_DIR>/log.txt (the caller holds the OUT_DIR lock)."""

    def __init__(self, out_dir, flag="OUT_DIR"):
        self.path, self.flag = Path(out_dir) / "log.txt", flag
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a"):
                pass
        except OSError as error:
            raise UserError(f"cannot write {self.path} ({flag}): {error.strerror}") from None

    def write(self, *lines, echo=True):
        if echo:
            for line in lines:
                print(line, flush=True)
        try:
            with open(self.path, "a") as handle:
                handle.write("".join(line + "\n" for line in lines))
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as error:
            raise UserError(f"cannot write {self.path} ({self.flag}): {error.strerror}") from None
