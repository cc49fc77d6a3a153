"""The one exception type for mistakes a user can fix (bad path, bad file, bad config value).

Entry points catch it, print its message on one line and exit with code 2; Ctrl-C ends with one
line and exit code 130 (the writers have removed their temporary files on the way out); anything
else is a bug and keeps its traceback. This module imports nothing from the project: every layer
may raise its error.
"""

import argparse
import numbers
import os
import re
import signal
import stat
import sys
import threading
import unicodedata


class UserError(Exception):
    """A problem with the user's input: the message names the thing and the fix."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are UserErrors: one `error: ...` line, exit code 2."""

    def error(self, message):
        raise UserError(f"{message} (python {self.prog} --help lists the options)")


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except an unset one (None): its help says where it comes from."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


class ExamplesHelpFormatter(argparse.RawDescriptionHelpFormatter, DefaultsHelpFormatter):
    """DefaultsHelpFormatter that prints the description and the epilog as written: command-line
    examples keep their lines."""


def is_utf8(text: str) -> bool:
    """False for text holding bytes that are not UTF-8: Python keeps such bytes of a command line or
    file name as lone surrogates, which OpenCV crashes on and UTF-8 files cannot hold."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def is_int(value) -> bool:
    """A whole number, not a bool (bool is an int subclass that JSON and YAML values can carry)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def one_line(text) -> str:
    """`text` on one line (messages quote file contents and library errors)."""
    return " ".join(str(text).split())


_KINDS = [(stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a directory")]


def special_kind(path) -> str | None:
    """What `path` points to when that is not a regular file ("a FIFO (named pipe)", "a directory",
    ...), None for a regular file or a missing path. Only stat()s: never opens, so never blocks."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    if stat.S_ISREG(mode):
        return None
    return next((kind for test, kind in _KINDS if test(mode)), "not a regular file")


def readable_file(path, what: str = ""):
    """The one check before a project reads a file: `path` unchanged when it is missing (the reader
    reports that in its own words) or a regular file; UserError naming it otherwise. Opening a FIFO
    blocks until a writer appears and a device streams forever, so they are refused before open.
    `what` names the setting or role of the file, e.g. " (--cfg)"."""
    kind = special_kind(path)
    if kind is not None:
        raise UserError(f"cannot read {path}{what}: it is {kind}, not a regular file; give a regular file")
    return path


def log_safe(text) -> str:
    """`text` with every character that could end or rewrite a line escaped (\\n, \\r, \\x1b,
    \\u2028, ...): a value written into a log line stays on that line. Tabs and printable text are
    kept as they are."""
    text = str(text)
    if text.isprintable():
        return text
    out = []
    for char in text:
        if char == "\t" or char.isprintable() or unicodedata.category(char) not in ("Cc", "Zl", "Zp"):
            out.append(char)
        else:
            out.append(char.encode("unicode_escape").decode("ascii"))
    return "".join(out)


def worded_for(message: str, flag_names: dict | None) -> str:
    """`message` with config key names replaced by the flags the user typed (TEST.WEIGHTS ->
    --weight): the library names settings by their config keys, each entry point by its flags."""
    for key, flag in (flag_names or {}).items():
        message = re.sub(rf"(?<![\w.]){re.escape(key)}(?![\w])", flag, message)
    return message


def typed_flags(flag_keys: dict, argv) -> dict:
    """{config key: flag} for the flags of `flag_keys` ({flag: key}) that appear in `argv`."""
    typed = {arg.split("=", 1)[0] for arg in argv}
    return {key: flag for flag, key in flag_keys.items() if flag in typed}


class _QuietStream:
    """sys.stdout / sys.stderr of an entry point: a write or flush that fails because the stream
    went away (a closed pipe, a terminal gone, EBADF) sends the rest to /dev/null instead of ending
    the run: progress and messages never cost the result."""

    def __init__(self, stream):
        self._stream = stream

    def _lost(self):
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())  # what is still buffered goes nowhere, quietly
            os.close(devnull)
        except (OSError, ValueError):
            pass
        self._stream = open(os.devnull, "w")

    def write(self, text):
        try:
            return self._stream.write(text)
        except (OSError, ValueError):
            self._lost()
            return len(text)

    def flush(self):
        try:
            self._stream.flush()
        except (OSError, ValueError):
            self._lost()

    def __getattr__(self, name):
        return getattr(self._stream, name)


def quiet_streams():
    """Make stdout and stderr safe to write whatever happened to them: a descriptor closed at start
    (`2>&-`, some daemons) is reopened on /dev/null, so no file the run opens later takes its number
    and receives progress bars; later failures go quietly to /dev/null (`_QuietStream`)."""
    for fd, name in ((1, "stdout"), (2, "stderr")):
        try:
            os.fstat(fd)
        except OSError:
            devnull = os.open(os.devnull, os.O_WRONLY)
            if devnull != fd:
                os.dup2(devnull, fd)
                os.close(devnull)
            setattr(sys, name, open(fd, "w", buffering=1, closefd=False))
        stream = getattr(sys, name)
        if stream is None:
            stream = open(fd, "w", buffering=1, closefd=False)
        if not isinstance(stream, _QuietStream):
            setattr(sys, name, _QuietStream(stream))


def quiet_interrupt_during_startup():
    """Ctrl-C while an entry point is still importing (torch takes about a second) ends with one
    line and exit code 130 instead of a traceback from inside an import; nothing has been written
    yet. `exit_code_of` hands Ctrl-C back to Python once the work starts. Also makes stdout and
    stderr safe to write (`quiet_streams`)."""
    quiet_streams()
    def stop(_signum, _frame):
        sys.stderr.write("interrupted: nothing was started\n")
        sys.stderr.flush()
        os._exit(130)
    signal.signal(signal.SIGINT, stop)


def exit_with(code: int):
    """End an entry point with its exit code. The work is done and its outputs are written: a
    Ctrl-C while the interpreter shuts down (torch's teardown takes a moment) is ignored, so it can
    neither print a traceback nor turn the exit code into "killed by SIGINT"."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(code)


def exit_code_of(action, flag_names=None):
    """Run `action()` for a command-line entry point: 0 when it returns, 2 with the one-line message
    on stderr when it raises UserError (config keys worded as the entry point's `flag_names`) or
    FloatingPointError (a computation on the user's settings and data gave NaN or Inf: the reranking
    scores' check raises it; nothing else in the project does), 130 with one line on Ctrl-C."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        action()
    except (UserError, FloatingPointError) as error:
        print(f"error: {worded_for(one_line(error), flag_names)}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing partial was kept; run the same command again to start over "
              "(cached features and committed parts are reused)", file=sys.stderr, flush=True)
        return 130
    return 0
