"""Errors a user can act on. The CLI prints their message as one line and exits 2; anything else is a bug.

A verb that ran but whose work failed (a crawl whose run ended ``failed``) does not raise: its result dict carries
:data:`RESULT_ERROR` (one line saying what failed and why), and the CLI prints that line, then the result JSON last,
and exits 1.
"""

#: Key of a verb's result dict holding the one-line reason its work failed (absent when it did not).
RESULT_ERROR = "error"


class HomewardError(Exception):
    """Base of the errors that describe bad input, bad configuration or an unreachable resource."""
