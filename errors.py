"""The one exception type for mistakes a user can fix (bad path, bad file, bad config value).

Entry points catch it, print its message on one line and exit with code 2; Ctrl-C ends with one
line and exit code 130 (the writers have removed their temporary files on the way out); anything
else is a bug and keeps its traceback. This module imports nothing from the project: every layer
may raise its error.
"""

import argparse
import os
import re
import signal
import sys
import threading


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


def one_line(text) -> str:
    """`text` on one line (messages quote file contents and library errors)."""
    return " ".join(str(text).split())


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


def quiet_interrupt_during_startup():
    """Ctrl-C while an entry point is still importing (torch takes about a second) ends with one
    line and exit code 130 instead of a traceback from inside an import; nothing has been written
    yet. `exit_code_of` hands Ctrl-C back to Python once the work starts."""
    def stop(_signum, _frame):
        sys.stderr.write("interrupted: nothing was started\n")
        sys.stderr.flush()
        os._exit(130)
    signal.signal(signal.SIGINT, stop)


def exit_code_of(action, flag_names=None):
    """Run `action()` for a command-line entry point: 0 when it returns, 2 with the one-line message
    on stderr when it raises UserError (config keys worded as the entry point's `flag_names`), 130
    with one line on Ctrl-C."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        action()
    except UserError as error:
        print(f"error: {worded_for(one_line(error), flag_names)}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing partial was kept; run the same command again to start over "
              "(cached features and committed parts are reused)", file=sys.stderr, flush=True)
        return 130
    return 0
