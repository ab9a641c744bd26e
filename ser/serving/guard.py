"""The handler guard: a timeout, outcome metrics, one log line per refusal (a traceback only for
real server errors), and deleting the request's uploads."""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import NoReturn, TypeVar

from ser.serving.limits import RequestTimeoutError, ServerError, ServingError, UploadGoneError
from ser.serving.monitoring import AppMetrics
from ser.serving.uploads import UploadRegistry

logger = logging.getLogger(__name__)

T = TypeVar("T")


# -- the handler guard -------------------------------------------------------------------------


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name.removesuffix("Error")).lower()


def rejection_reason(error: BaseException) -> str:
    """A stable metric label for a refused input: the typed error's own ``code`` or its class name."""
    cause = error.__cause__ or error
    problems = getattr(getattr(cause, "report", None), "problems", None)
    if problems:  # ser.inference.quality.UnusableAudioError: the gate's first stable problem code
        return str(getattr(problems[0].code, "value", problems[0].code))
    return _snake(type(cause).__name__) if cause is not error else "user_error"


class RequestGuard:
    """Runs one request's work with a timeout, records its outcome, then deletes its upload.

    ``user_errors``: the exception types that mean "refused input, message for the user" (the
    app passes ``gr.Error``); anything else counts as ``error``.
    """

    def __init__(
        self,
        metrics: AppMetrics,
        uploads: UploadRegistry,
        timeout_s: float,
        workers: int,
        user_errors: tuple[type[BaseException], ...] = (),
    ):
        self.metrics = metrics
        self.uploads = uploads
        self.timeout_s = timeout_s
        self.user_errors = user_errors
        # Work runs here, not in Gradio's thread, so a stuck request can be answered at the timeout.
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="ser-request")

    def run(self, audio_path: str | None, work: Callable[[], T], probabilities: Callable[[T], Mapping[str, float]]) -> T:
        started = time.perf_counter()
        if audio_path and not Path(audio_path).is_file():
            self.metrics.observe_failure("rejected_input", time.perf_counter() - started, reason="upload_gone")
            raise UploadGoneError(
                "This audio is no longer on the server: uploads are deleted after their answer. Upload or record it again."
            )
        future = self._executor.submit(work)
        timed_out = False
        try:
            result = future.result(timeout=self.timeout_s)
        except concurrent.futures.TimeoutError:
            timed_out = True
            future.cancel()
            self.metrics.observe_failure("timeout", time.perf_counter() - started)
            logger.warning("Request timed out after %.0f s", self.timeout_s)
            raise RequestTimeoutError(
                f"No answer within the {self.timeout_s:g} s request time limit (--request_timeout_s); try a shorter clip or again later."
            ) from None
        except BaseException as error:
            self._raise_outcome(error, audio_path, time.perf_counter() - started)
        finally:
            # Deleted before the answer leaves (so nothing is left once a client has it), except after a
            # timeout: then when the work really stops, never while it may still read the file.
            if timed_out:
                future.add_done_callback(lambda _: self.uploads.release(audio_path))
            else:
                self.uploads.release(audio_path)
        self.metrics.observe_answer(probabilities(result), time.perf_counter() - started)
        return result

    def _raise_outcome(self, error: BaseException, audio_path: str | None, elapsed_s: float) -> NoReturn:
        outcome = self._outcome_of(error, audio_path, elapsed_s)
        if outcome is error:
            raise error
        raise outcome from error

    def _outcome_of(self, error: BaseException, audio_path: str | None, elapsed_s: float) -> BaseException:
        """Count and log a failed request; returns what to raise: the refusal itself (one log line, no
        traceback: the user's input was refused as designed), or a :class:`ServerError` for anything
        else (logged with its traceback and a reference the user can quote)."""
        name = Path(audio_path).name if audio_path else "request"
        if isinstance(error, self.user_errors) or isinstance(error, ServingError):
            reason = rejection_reason(error)
            self.metrics.observe_failure("rejected_input", elapsed_s, reason=reason)
            logger.info("Refused %s (%s): %s", name, reason, _message_of(error))
            return error
        if not isinstance(error, Exception):  # KeyboardInterrupt, SystemExit: not ours to turn into an answer
            return error
        reference = uuid.uuid4().hex[:8]
        self.metrics.observe_failure("error", elapsed_s)
        logger.error("Server error %s on %s", reference, name, exc_info=error)
        return ServerError(reference)

    @contextlib.contextmanager
    def handling(self, audio_path: str | None, owner: str | None = None) -> Iterator[None]:
        """For handlers that run without :meth:`run` (the timeline, live mode): the same refusal
        logging, metrics and server-error reference, and the upload deleted when the block ends
        (``owner``: the browser session that claimed it, for a live slice)."""
        started = time.perf_counter()
        try:
            yield
        except BaseException as error:
            self._raise_outcome(error, audio_path, time.perf_counter() - started)
        finally:
            self.uploads.release(audio_path, owner)


def _message_of(error: BaseException) -> str:
    """A refusal's message (``gr.Error`` keeps it in ``.message``, not in ``str()``'s quotes)."""
    return str(getattr(error, "message", None) or error)


