"""The one error type of sbusr-api's handlers: an HTTP status with a message the client may read.

Every module of the API raises it (request checks, the bus side's in-flight limit, the handlers);
:meth:`sbusr.api.handlers.BaseHandler.write_error` turns it into the JSON error envelope.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import oslo_messaging
import tornado.web

from sbusr.smartbus import codec
from sbusr.smartbus.interface import BusError, NotConnected
from sbusr.transport.senders import RemoteError


class ApiError(tornado.web.HTTPError):
    """An HTTP error whose message (and extra fields) the client may see."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(status, "%s", message)
        self.message = message
        self.extra = extra


@contextmanager
def asking_server(server: str, what: str) -> Iterator[None]:
    """Turns what a call to sbusr-server can raise into the status its client gets: 502 when the
    server answered with an error (its code and data kept), 504 when it did not answer in time,
    503 while sbusr-api is off the bus, 502 when the request could not be sent."""
    try:
        yield
    except RemoteError as exc:
        raise ApiError(502, f"sbusr-server {server} {what}: {exc.rpc_message}",
                       rpc_code=exc.code, data=exc.data) from None
    except oslo_messaging.MessagingTimeout as exc:
        raise ApiError(504, str(exc)) from None
    except NotConnected as exc:
        raise ApiError(503, f"not connected to the SmartBus: {exc}") from None
    except (BusError, codec.CodecError) as exc:
        raise ApiError(502, f"could not reach sbusr-server {server}: {exc}") from None
