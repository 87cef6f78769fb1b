"""optkit's error types.

Every failure that is the user's input (a bad file, a bad option, a model that fails the checker) is an
`InputError`; the CLI prints its one-line message and exits 2. `VerificationError` is raised by APIs that
were asked to refuse a model whose rewritten outputs do not match (the CLI exits 1 for it).
"""

from __future__ import annotations


class OptkitError(Exception):
    """Base class of every error optkit raises on purpose. `exit_code` is what the CLI returns."""

    exit_code = 2


class InputError(OptkitError):
    """The input (file, model, option value) is unusable; the message names it and says why."""

    exit_code = 2


class VerificationError(OptkitError):
    """A rewritten model does not match the original within tolerance."""

    exit_code = 1


class InternalError(OptkitError):
    """optkit produced something invalid: a bug to report, never the user's fault."""

    exit_code = 3


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (its type name when it has none), for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__
