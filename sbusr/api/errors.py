"""The one error type of sbusr-api's handlers: an HTTP status with a message the client may read.

Every module of the API raises it (request checks, the bus side's in-flight limit, the handlers);
:meth:`sbusr.api.handlers.BaseHandler.write_error` turns it into the JSON error envelope.
"""

from __future__ import annotations

from typing import Any

import tornado.web


class ApiError(tornado.web.HTTPError):
    """An HTTP error whose message (and extra fields) the client may see."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(status, "%s", message)
        self.message = message
        self.extra = extra
