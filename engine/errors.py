"""Errors a user can act on. The CLI prints their message as one line and exits non-zero; anything else is a bug."""


class HomewardError(Exception):
    """Base of the errors that describe bad input, bad configuration or an unreachable resource."""
