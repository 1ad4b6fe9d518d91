"""Exceptions that the CLI turns into exit codes.

Library functions raise these with a message that names the file and the value at fault;
the command group (`vgg_mobile.cli.main`) prints the message and exits with the class's
`exit_code`.
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


# Longest piece of a received value that an error message repeats: a 50 MB string in a config
# file must not become a 50 MB line on the terminal.
ECHO_LIMIT = 200


def clip(text: str, limit: int = ECHO_LIMIT) -> str:
    """`text` cut to `limit` characters, followed by `... (N chars)` when it was longer."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


def require(ok: bool, what: str, received: str) -> None:
    """Raises `BadInputError("{what}. Received: {received}")` unless `ok`.

    The one shape of every option check: what is expected, then the value that was given
    (cut to `ECHO_LIMIT` characters).
    """
    if not ok:
        raise BadInputError(f"{what}. Received: {clip(received)}")


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def require_number(value, name: str, low: float | None = None, high: float | None = None,
                   low_open: bool = False, high_open: bool = False,
                   integer: bool = False) -> None:
    """Requires `value` to be a finite number (an integer if `integer`) within the bounds.

    The one check of every numeric setting of the config classes: `inf`, `nan`, a bool and a
    string are refused whatever the bounds, which a bare `value > 0` would let through.

    Args:
        value: The value received.
        name: The field's name, for the message.
        low: Lowest allowed value, or `None` for no bound. Defaults to `None`.
        high: Highest allowed value, or `None` for no bound. Defaults to `None`.
        low_open: `low` itself is refused. Defaults to `False`.
        high_open: `high` itself is refused. Defaults to `False`.
        integer: Only integers are allowed. Defaults to `False`.

    Raises:
        BadInputError: `{name} must be ... Received: {name}={value}`.
    """
    import math

    kind = "an integer" if integer else "a finite number"
    if low is not None and high is not None:
        # Finite bounds say "finite" already: "alpha must be in [0, 1]".
        kind = "an integer in" if integer else "in"
        bounds = f" {'(' if low_open else '['}{_number(low)}, {_number(high)}{')' if high_open else ']'}"
    elif low is not None:
        bounds = f" {'>' if low_open else '>='} {_number(low)}"
    elif high is not None:
        bounds = f" {'<' if high_open else '<='} {_number(high)}"
    else:
        bounds = ""
    what = f"{name} must be {kind}{bounds}"
    numeric = isinstance(value, int) if integer else isinstance(value, (int, float))
    ok = numeric and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    require(ok, what, f"{name}={value!r}")
