"""The one exception type for mistakes a user can fix (bad path, bad file, bad config value).

Entry points catch it, print its message on one line and exit with code 2; anything else is a bug
and keeps its traceback.
"""

import sys


class UserError(Exception):
    """A problem with the user's input: the message names the thing and the fix."""


def exit_code_of(action):
    """Run `action()` for a command-line entry point: 0 when it returns, 2 with the one-line message
    on stderr when it raises UserError."""
    try:
        action()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
