"""The one exception type the CLI turns into a one-line message and exit code 2."""


class MaskvitError(Exception):
    """A problem with the user's input (file, value, model) that they can fix."""
