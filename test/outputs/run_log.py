"""log.txt: lines printed and appended a block at a time, fsynced, in the official format."""

import os
from pathlib import Path

from errors import UserError, log_safe, special_kind
from test.outputs.writer import refuse_input


class RunLog:
    """Prints lines and appends them to <OUT_DIR>/log.txt (the caller holds the OUT_DIR lock).

    Each argument of `write` is one log line: every value in it stays on it (`errors.log_safe`
    escapes line breaks and control characters), so no path or name can add a line that log
    readers would count as a result."""

    def __init__(self, out_dir, flag="OUT_DIR"):
        self.path, self.flag = Path(out_dir) / "log.txt", flag
        kind = special_kind(self.path)
        if kind is not None:  # opening a FIFO to append blocks until someone reads it
            raise UserError(f"cannot write {self.path} ({flag}): it is {kind}; remove it or choose another {flag}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not os.path.lexists(self.path):  # never created through a link: `write` checks its target first
                with open(self.path, "a"):
                    pass
        except OSError as error:
            raise UserError(f"cannot write {self.path} ({flag}): {error.strerror}") from None

    def write(self, *lines, echo=True):
        lines = [log_safe(line) for line in lines]
        if echo:
            for line in lines:
                print(line, flush=True)
        try:
            # a file this run reads, named log.txt in OUT_DIR or reached through a link, is never appended to
            refuse_input(self.path)
        except UserError as error:
            raise UserError(f"{error} (a {self.flag} file)") from None
        try:
            # backslashreplace: a command line or path holding non-UTF-8 bytes is logged, not a crash
            with open(self.path, "a", encoding="utf-8", errors="backslashreplace") as handle:
                handle.write("".join(line + "\n" for line in lines))
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as error:
            raise UserError(f"cannot write {self.path} ({self.flag}): {error.strerror}") from None
