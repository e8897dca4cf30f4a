"""The exceptions the CLI turns into a one-line message and an exit code."""


class MaskvitError(Exception):
    """A problem with the user's input (file, value, model) that they can fix."""

    exit_code = 2


class Interrupted(MaskvitError):
    """Ctrl-C, with what to do next; the exit code a shell gives it."""

    exit_code = 130


def reason(e: BaseException) -> str:
    """Another library's exception as one line, for a MaskvitError's message: its first line (some
    span several: tarfile lists every compression it tried, one per line), else its type's name."""
    lines = str(e).splitlines()
    return lines[0].rstrip(":") if lines else type(e).__name__
