"""The one exception type for mistakes a user can fix (bad path, bad file, bad config value).

Entry points catch it, print its message on one line and exit with code 2; anything else is a bug
and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input: the message names the thing and the fix."""
