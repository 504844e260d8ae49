"""Errors that carry a message meant for the user: what is wrong and what to do."""

from __future__ import annotations


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


class Unavailable(GPUQueueError):
    """A service the queue needs (e.g. the cluster's Redis) does not answer; nothing was changed."""

    http_status = 503
