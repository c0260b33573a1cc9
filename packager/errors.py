"""Error types, each carrying the process exit code DESIGN.md assigns to it.

Library code raises these; the CLI turns them into one line on stderr and the exit code.
Anything else that escapes is a bug in tfpack (exit 1).
"""

from typing import Any


class TfpackError(Exception):
    """Base class: an expected failure with a one-line, actionable message.

    ``result`` optionally carries the JSON a command would have printed had it succeeded (a
    failed smoke test's report), so ``--json`` callers get it on failure too.
    """

    exit_code: int = 1

    def __init__(self, message: str, *, result: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.result = result


class UsageError(TfpackError):
    """Bad usage, a bad flag value, or a bad/unsupported source (exit 2)."""

    exit_code = 2


class SourceError(UsageError):
    """The source model is missing, corrupt or of an unsupported kind (exit 2)."""


class ToolError(UsageError):
    """A tool tfpack drives failed, or tfpack's installation is incomplete: the Docker engine or
    a docker build, a pip wheel build, a missing template (exit 2: the machine, not tfpack, needs
    fixing; the message says what failed and where its log is)."""


class VerificationError(TfpackError):
    """A signature or numerical-equivalence check failed (exit 3)."""

    exit_code = 3


class SmokeTestFailed(TfpackError):
    """The smoke test against a running server failed (exit 4)."""

    exit_code = 4


class ContractBreak(TfpackError):
    """A breaking change of the serving contract between two versions (exit 5)."""

    exit_code = 5


# Lines TensorFlow puts before the cause of an OpError ("Graph execution error:", "Detected at
# node ... defined at (most recent call last):", the Python stack of where the op was built).
_HEADER_LINES = (
    "Graph execution error",
    "Detected at node",
    "Traceback",
    "File ",
    "Node:",
    "  ",
    "<stack traces unavailable>",
)


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first informative line of an underlying library's error, short enough for one line."""
    message = getattr(exc, "message", None)  # TensorFlow's OpError keeps its own text here
    text = message if isinstance(message, str) else str(exc)
    lines = [line for line in text.splitlines() if line.strip()]
    informative = [
        line.strip()
        for line in lines
        if not line.startswith(_HEADER_LINES) and not line.strip().startswith(_HEADER_LINES)
    ]
    chosen = (informative or [line.strip() for line in lines] or [type(exc).__name__])[0]
    return chosen[:limit]


def shorten(text: str, limit: int = 300) -> str:
    """``text`` cut to at most ``limit`` characters, "..." marking a cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."
