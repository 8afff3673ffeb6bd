"""Telling an outage from a missing thing: a service that cannot be reached is not absent.

An S3 endpoint or MLflow server that refuses connections makes the client libraries say
"bucket does not exist" or fail like a missing model, so a run gave up on a configuration
error that was really a network blip. :func:`is_connection_failure` recognises a connection
failure anywhere in an exception's chain (``requests``, ``urllib3``, ``botocore``,
``aiohttp`` and the builtin ``ConnectionError`` all end there), and
:class:`EndpointUnreachableError` says which endpoint, as an ``OSError`` so the task retry
policy (:func:`tasks.common.retry_on_transient`) retries it like other I/O.
"""

from __future__ import annotations

import socket

__all__ = ["EndpointUnreachableError", "is_connection_failure", "is_transient"]

# Exception class names (not imports: botocore, aiohttp and requests are optional here)
# that mean "could not talk to the server", whatever library raised them.
_CONNECTION_CLASS_NAMES = frozenset(
    {
        "EndpointConnectionError",  # botocore
        "ConnectTimeoutError",  # botocore / urllib3
        "ConnectionClosedError",  # botocore
        "ReadTimeoutError",  # botocore / urllib3
        "NewConnectionError",  # urllib3
        "ProtocolError",  # urllib3: connection dropped mid-request
        "ClientConnectorError",  # aiohttp
        "ServerDisconnectedError",  # aiohttp
        "ServerTimeoutError",  # aiohttp
    }
)

_REQUESTS_NAMES = frozenset({"ConnectionError", "ConnectTimeout", "ReadTimeout"})

# Errors that say "this will not get better by waiting": no retry for them.
PERMANENT_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


class EndpointUnreachableError(ConnectionError):
    """A service endpoint (S3, MLflow) refused or dropped the connection: an outage, retry.

    A ``ConnectionError`` (so an ``OSError``): the pipeline's I/O retry policy retries it,
    and it is never mistaken for a missing bucket or model.
    """

    def __init__(self, service: str, endpoint: str, cause: BaseException) -> None:
        self.service, self.endpoint = service, endpoint
        super().__init__(
            f"cannot reach {service} at {endpoint} ({type(cause).__name__}: {cause}); "
            "this is an outage or a wrong endpoint setting, not a missing resource: "
            "the run retries, and if it keeps failing check that the service is up and "
            "reachable from this worker"
        )


def is_connection_failure(exc: BaseException) -> bool:
    """True when ``exc`` or anything in its ``__cause__``/``__context__`` chain is a failure
    to connect to (or stay connected to) a server, rather than an answer from it."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ConnectionError | TimeoutError | socket.gaierror):
            return True
        if any(cls.__name__ in _CONNECTION_CLASS_NAMES for cls in type(current).__mro__):
            return True
        kind = type(current)
        if kind.__module__.startswith("requests") and kind.__name__ in _REQUESTS_NAMES:
            return True
        current = current.__cause__ or current.__context__
    return False


def is_transient(exc: BaseException) -> bool:
    """An I/O or network error that may pass by waiting (the pipeline's retry rule): any
    ``OSError`` but a missing or forbidden path (a full disk included: space is freed), or a
    connection failure however wrapped. Bad data and bugs are not: they fail the same way
    again, only later."""
    if isinstance(exc, OSError) and not isinstance(exc, PERMANENT_OS_ERRORS):
        return True
    return is_connection_failure(exc)
