"""Exceptions shared by every layer of the host."""

from __future__ import annotations


class GuestError(Exception):
    """A guest cannot be loaded: bad module, missing export, bad import, failed init.

    The message always names the guest and says what is wrong.
    """

    def __init__(self, guest: str, problem: str) -> None:
        super().__init__(f"guest {guest!r}: {problem}")
        self.guest = guest
        self.problem = problem


class HostTrap(Exception):
    """Raised inside a host function to end the guest call with a wasm trap.

    `status` is the HTTP status the client gets when this trap ends a request
    (500 unless the cause is the client's, e.g. 413 for an oversized body).
    """

    def __init__(self, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.status = status


class GuestTrap(Exception):
    """A call into a guest trapped (or exited, or ran out of time).

    The instance that trapped must not be used again.
    """

    def __init__(self, guest: str, export: str, message: str, *, status: int = 500,
                 exit_code: int | None = None) -> None:
        super().__init__(f"guest {guest!r} trapped in {export}: {message}")
        self.guest = guest
        self.export = export
        self.message = message
        self.status = status
        self.exit_code = exit_code


class MissingExtra(ImportError):
    """An optional feature's dependencies are not installed: the message names the extra that brings them."""

    def __init__(self, feature: str, extra: str, cause: ImportError | None = None) -> None:
        missing = f" ({cause.name} is not installed)" if cause is not None and cause.name else ""
        super().__init__(f"{feature} needs the '{extra}' extra{missing}: pip install 'http-wasm-asgi[{extra}]'")
        self.extra = extra


class PoolTimeout(Exception):
    """Every instance of a guest stayed busy for longer than the pool timeout."""


def first_line(exc: BaseException) -> str:
    """The cause of an error (a wasmtime error or trap), without its backtrace."""
    text = str(exc).strip()
    if "Caused by:" in text:
        cause = [line.strip() for line in text.split("Caused by:", 1)[1].splitlines() if line.strip()]
        text = " ".join(cause)
        return text.removeprefix("wasm trap: ")
    return text.splitlines()[0] if text else type(exc).__name__
