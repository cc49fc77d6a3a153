"""The one exception type for mistakes a user can fix (bad path, bad file, bad config value).

Entry points catch it, print its message on one line and exit with code 2; Ctrl-C ends with one
line and exit code 130 (the writers have removed their temporary files on the way out); anything
else is a bug and keeps its traceback. This module imports nothing from the project: every layer
may raise its error.
"""

import sys


class UserError(Exception):
    """A problem with the user's input: the message names the thing and the fix."""


def one_line(text) -> str:
    """`text` on one line (messages quote file contents and library errors)."""
    return " ".join(str(text).split())


def exit_code_of(action):
    """Run `action()` for a command-line entry point: 0 when it returns, 2 with the one-line message
    on stderr when it raises UserError, 130 with one line on Ctrl-C."""
    try:
        action()
    except UserError as error:
        print(f"error: {one_line(error)}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing partial was kept; run the same command again to start over "
              "(cached features and committed parts are reused)", file=sys.stderr, flush=True)
        return 130
    return 0
