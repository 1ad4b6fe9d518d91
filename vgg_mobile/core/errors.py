"""Exceptions that the CLI turns into exit codes.

Library functions raise these with a message that names the file and the value at fault;
`cli.py` prints the message and exits with the class's `exit_code`.
"""


class VggMobileError(Exception):
    """Base class of every error vgg-mobile raises on purpose."""

    exit_code = 1


class BadInputError(VggMobileError, ValueError):
    """The user's input (data folder, run directory, option value) cannot be used."""

    exit_code = 2


class DataError(BadInputError):
    """A data folder or an image in it is unusable."""


class RunDirError(BadInputError):
    """A run directory is missing, incomplete, or holds something unexpected."""


class WriteError(VggMobileError):
    """An output could not be written (disk full, file too large, permissions)."""

    exit_code = 1


class OutputBusyError(VggMobileError):
    """Another vgg-mobile process is writing the same output folder."""

    exit_code = 4


class BudgetError(VggMobileError):
    """A size or accuracy budget was missed.

    Attributes:
        report: What was measured, for `--json`: the manifest the export would have had, with
            `"budget": {"passed": false, "misses": [...]}` and `"written": false`; `None`
            when there is nothing to report.
    """

    exit_code = 3

    def __init__(self, message: str, report: dict | None = None):
        super().__init__(message)
        self.report = report


def require(ok: bool, what: str, received: str) -> None:
    """Raises `BadInputError("{what}. Received: {received}")` unless `ok`.

    The one shape of every option check: what is expected, then the value that was given.
    """
    if not ok:
        raise BadInputError(f"{what}. Received: {received}")
