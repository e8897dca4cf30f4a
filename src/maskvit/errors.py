"""The one exception type the CLI turns into a one-line message and exit code 2."""


class MaskvitError(Exception):
    """A problem with the user's input (file, value, model) that they can fix."""


def reason(e: BaseException) -> str:
    """Another library's exception as one line, for a MaskvitError's message: its first line (some
    span several: tarfile lists every compression it tried, one per line), else its type's name."""
    lines = str(e).splitlines()
    return lines[0].rstrip(":") if lines else type(e).__name__
