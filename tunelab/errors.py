"""Typed errors: each carries a message written for a person and the OpenAI error code and param it maps to.

Domain code raises these; the CLI prints them without a traceback and the HTTP API turns them into the
OpenAI error envelope in one place.
"""

from __future__ import annotations


class TunelabError(Exception):
    """Base of every error tunelab reports to a user."""

    code: str = "invalid_request_error"
    type: str = "invalid_request_error"
    status: int = 400

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class InvalidRequest(TunelabError):
    """The caller asked for something malformed or impossible (a bad flag, an out-of-range value)."""


class AuthenticationFailed(TunelabError):
    """No API key, or one the service does not accept."""

    code = "invalid_api_key"
    status = 401


class NotFound(TunelabError):
    code = "not_found"
    status = 404


class ModelNotFound(NotFound):
    code = "model_not_found"


class ModelRefused(TunelabError):
    """A model directory tunelab will not load: pickle weights, remote code, missing files."""

    code = "model_refused"


class InvalidTrainingFile(TunelabError):
    """The data check found errors; `report` holds every one of them."""

    code = "invalid_training_file"

    def __init__(self, message: str, *, report=None, param: str = "training_file", code: str | None = None):
        super().__init__(message, param=param, code=code)
        self.report = report


class CheckpointError(TunelabError):
    code = "checkpoint_corrupt"
