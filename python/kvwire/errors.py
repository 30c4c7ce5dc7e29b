"""Exceptions raised by kvwire: every failed C++ Status becomes a kvwire.Error."""

import builtins


class Error(Exception):
    """A kvwire operation failed. ``code`` names the C++ StatusCode ("corrupt", "timeout", ...)."""

    def __init__(self, message, code="internal error"):
        super().__init__(message)
        self.code = code


class TimeoutError(Error, builtins.TimeoutError):  # noqa: A001 (kvwire.TimeoutError on purpose)
    """A wait, a next_request or a connection ran past its timeout."""


class InvalidArgumentError(Error, ValueError):
    """The C++ API refused an argument (a codec spec, a shape, an option)."""


_BY_CODE = {
    "timeout": TimeoutError,
    "in progress": TimeoutError,
    "invalid argument": InvalidArgumentError,
}


def _from_status(code, message):
    """The exception for a C++ Status (called by the compiled module)."""
    return _BY_CODE.get(code, Error)(message, code)
