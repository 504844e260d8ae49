"""Errors that carry a message meant for the user: what is wrong and what to do."""

from __future__ import annotations

from typing import Optional


class GPUQueueError(Exception):
    """Base class. ``str(err)`` is a sentence a user can act on."""

    http_status = 500


class BadRequest(GPUQueueError):
    """The request is malformed or asks for something impossible; nothing was changed."""

    http_status = 400


class Rejected(BadRequest):
    """The scheduler refuses the job (unknown pool, too many GPUs, queue full, ...)."""

    http_status = 400


class NotFound(GPUQueueError):
    """No such job, or not one the caller may see."""

    http_status = 404


class Forbidden(GPUQueueError):
    """The caller is known but may not do this."""

    http_status = 403


class Conflict(GPUQueueError):
    """The job is not in a state that allows this (e.g. no result yet)."""

    http_status = 409


class Gone(GPUQueueError):
    """What was asked for existed but is no longer kept (e.g. results dropped to keep the
    owner's stored results within ``max_results_mb``); the message says why."""

    http_status = 410


class Unauthenticated(GPUQueueError):
    """The request carries no valid credential."""

    http_status = 401


class RateLimited(GPUQueueError):
    """The caller submits faster than its limit; nothing was changed. ``retry_after``: seconds
    until a submit is accepted again (the HTTP ``Retry-After`` header)."""

    http_status = 429

    def __init__(self, message: str, retry_after: Optional[float] = None):
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(GPUQueueError):
    """A service the queue needs (the cluster's Redis, the API service) does not answer or
    refuses to work; nothing was changed."""

    http_status = 503


BY_STATUS: dict[int, type[GPUQueueError]] = {
    400: BadRequest, 401: Unauthenticated, 403: Forbidden, 404: NotFound, 409: Conflict,
    410: Gone, 413: BadRequest, 429: RateLimited, 503: Unavailable,
}
"""The error class a client raises for each HTTP status the API answers with."""


def error_for_status(status: int, message: str, reason: Optional[str] = None,
                     retry_after: Optional[str] = None) -> GPUQueueError:
    """The error for an HTTP error answer: its class from :data:`BY_STATUS` (else a plain
    GPUQueueError that keeps the status), carrying the server's ``message`` (and a 429's
    ``Retry-After`` header, in seconds)."""
    cls = BY_STATUS.get(status)
    if cls is RateLimited:
        try:
            return RateLimited(message, float(retry_after) if retry_after else None)
        except ValueError:  # an HTTP date, from some proxy: the message says when
            return RateLimited(message)
    if cls is not None:
        return cls(message)
    err = GPUQueueError(message)
    err.http_status = status if 400 <= status < 600 else 502
    return err
