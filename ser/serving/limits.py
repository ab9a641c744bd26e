"""The serving limits (flags of app.py, each with a ``$SER_*`` variable) and the errors they raise."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ser.serving.monitoring import DEFAULT_DRIFT_WINDOW

logger = logging.getLogger(__name__)


# -- limits ------------------------------------------------------------------------------------

#: Longer uploads are refused: the model only needs a few seconds of speech, and this bounds CPU per request.
DEFAULT_MAX_DURATION_S = 60.0
#: Enforced while the upload streams in (60 s of 48 kHz stereo float wav is ~23 MB).
DEFAULT_MAX_UPLOAD_MB = 32.0
#: Per request, from the handler's start: decode + quality gate + model. The timeline (long
#: recordings, minutes of work by design) is not bounded by it.
DEFAULT_REQUEST_TIMEOUT_S = 60.0
#: Uploads that no request ever used (uploaded, never submitted) are deleted after this long.
DEFAULT_UPLOAD_TTL_S = 900.0

#: flag name -> environment variable that sets its default.
ENV_VARS = {
    "max_upload_mb": "SER_MAX_UPLOAD_MB",
    "max_duration_s": "SER_MAX_DURATION_S",
    "concurrency_limit": "SER_CONCURRENCY_LIMIT",
    "max_queue_size": "SER_MAX_QUEUE_SIZE",
    "request_timeout_s": "SER_REQUEST_TIMEOUT_S",
    "upload_ttl_s": "SER_UPLOAD_TTL_S",
    "drift_window": "SER_DRIFT_WINDOW",
}


class ServingError(RuntimeError):
    """A request refused by the serving layer; the message is written for the user."""


class RequestTimeoutError(ServingError):
    """The handler did not answer within the request timeout."""


class UploadGoneError(ServingError):
    """The request names an uploaded file that has already been deleted."""


class ServerError(ServingError):
    """Something broke on the server's side (not the request's fault); logged with its traceback
    under ``reference``, which the message gives the user to report."""

    def __init__(self, reference: str):
        self.reference = reference
        super().__init__(
            f"Something went wrong on the server's side (reference {reference}), not with your audio. "
            "It was logged; please try again, and quote the reference if it keeps happening."
        )


def env_default(flag: str, default: float | int) -> Callable[[], Any]:
    """``default_factory`` for a limit flag: ``$SER_<FLAG>`` when set, else ``default`` (same type)."""
    variable = ENV_VARS[flag]

    def factory():
        raw = os.environ.get(variable)
        if raw is None or raw.strip() == "":
            return default
        try:
            value = type(default)(raw)
        except ValueError:
            raise ValueError(f"${variable}={raw!r} is not a valid {type(default).__name__} (it sets --{flag}).") from None
        if value <= 0:
            raise ValueError(f"${variable}={raw!r} must be positive (it sets --{flag}).")
        return value

    return factory


def upload_limit_bytes(max_upload_mb: float) -> int:
    return int(max_upload_mb * 1024 * 1024)


@dataclass(frozen=True)
class ServingConfig:
    """The serving limits that are not Gradio queue settings (see ``app.py --help``)."""

    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S
    upload_ttl_s: float = DEFAULT_UPLOAD_TTL_S
    drift_window: int = DEFAULT_DRIFT_WINDOW


