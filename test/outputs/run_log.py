"""log.txt: lines printed and appended a block at a time, fsynced, in the official format."""

import os
from pathlib import Path

from errors import UserError
from test.outputs.writer import input_named


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
        what = input_named(self.path)
        if what is not None:  # a file this run reads, named log.txt in OUT_DIR, is never appended to
            raise UserError(f"refusing to write {self.path}: it is an input of this run ({what}); choose "
                            f"another {self.flag}")
        try:
            # backslashreplace: a command line or path holding non-UTF-8 bytes is logged, not a crash
            with open(self.path, "a", encoding="utf-8", errors="backslashreplace") as handle:
                handle.write("".join(line + "\n" for line in lines))
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as error:
            raise UserError(f"cannot write {self.path} ({self.flag}): {error.strerror}") from None
