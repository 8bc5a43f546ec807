"""User-facing errors: one line naming the input, the value, and the fix."""
from __future__ import annotations


class AAError(ValueError):
    """An input problem the user can fix; the CLI prints it as one line, never a traceback."""

    def __init__(self, what: str, value: object, fix: str):
        self.what, self.value, self.fix = what, value, fix
        super().__init__(f"{what}: {value!s} — {fix}")


class MissingDependencyError(AAError):
    """An optional package is not installed; names the extra that brings it."""

    def __init__(self, package: str, extra: str, purpose: str):
        super().__init__(
            f"{purpose} needs the optional package '{package}'",
            "not installed",
            f"install it with: pip install 'animate-anywhere[{extra}]'",
        )


def short_repr(value: object, limit: int = 60) -> str:
    """repr of a value read from a file, cut to a short piece of one line for an error message."""
    r = repr(value)
    return r if len(r) <= limit else r[: limit - 1] + "…"
