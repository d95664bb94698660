"""Exceptions for mistakes a user can fix; entry points print the message alone, without a traceback."""


class UserError(Exception):
    """Bad input (unknown paper/table/method, malformed config, missing data): the message says what to do."""


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss."""
