"""The ASGI middleware that puts the serving layer in front of Gradio, and ``create_serving`` /
``launch_kwargs`` that wire it into ``app.py``. The pieces: :mod:`ser.serving.limits`,
:mod:`ser.serving.uploads`, :mod:`ser.serving.payload`, :mod:`ser.serving.guard`,
:mod:`ser.serving.monitoring`.

Gradio 6.31 already refuses (by raising inside its own preprocessing) FileData that points at a
server path outside its upload folder, and URLs resolving to private addresses (its SSRF-protected
download). But it answers those with ``{"error": null}`` after logging a traceback, and it *does*
fetch public URLs server-side (an outbound request on behalf of anyone). :class:`ServingMiddleware`
(an ASGI middleware passed to ``launch(app_kwargs={"middleware": ...})``) therefore checks request
bodies before Gradio sees them and answers 4xx with a message. It also

* records every ``/gradio_api/upload`` so :class:`UploadRegistry` can delete each uploaded file as
  soon as the request that used it has its answer (reference-counted: Gradio stores uploads under
  a content hash, so two identical uploads share one path), plus a sweeper for uploads nobody
  submits;
* serves ``GET /metrics`` (Prometheus text format) and ``GET /health``.

:class:`RequestGuard` wraps the handler: a timeout, outcome metrics, and the deletion.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ser.serving.guard import RequestGuard
from ser.serving.limits import ServingConfig, upload_limit_bytes
from ser.serving.live import LiveSessions
from ser.serving.monitoring import (
    METRICS_CONTENT_TYPE,
    AppMetrics,
    Readiness,
    load_class_prior,
)
from ser.serving.payload import Endpoint, Refusal, check_body, endpoints_of, live_slices
from ser.serving.uploads import UploadRegistry

logger = logging.getLogger(__name__)


# -- the ASGI middleware -----------------------------------------------------------------------

_PREDICT_ROUTE = re.compile(r"/gradio_api/(?:queue/join|(call|run|api)/([^/]+)|call/v2/([^/]+)|stream/(?!.*/close)[^/]+)/?$")
_UPLOAD_ROUTE = re.compile(r"/gradio_api/upload/?$")
#: Multipart framing around a file; a body larger than the limit plus this cannot hold an allowed file.
_MULTIPART_SLACK_BYTES = 64 * 1024
#: Prediction bodies are a few hundred bytes of JSON; anything far larger is refused unread.
MAX_PREDICT_BODY_BYTES = 1024 * 1024


@dataclass
class ServingState:
    """Everything the middleware and the handler share for one app instance."""

    metrics: AppMetrics
    uploads: UploadRegistry
    readiness: Readiness
    max_upload_mb: float
    live_sessions: LiveSessions | None = None
    blocks: Any = None
    _endpoints: tuple[dict, dict] | None = field(default=None, repr=False)

    def endpoint(self, fn_index: Any, api_name: str | None) -> Endpoint | None:
        if self.blocks is None:
            return None
        if self._endpoints is None:
            self._endpoints = endpoints_of(self.blocks)
        by_index, by_name = self._endpoints
        if api_name is not None:
            return by_name.get(api_name)
        return by_index.get(fn_index) if isinstance(fn_index, int) else None


async def _read_body(receive) -> tuple[bytes, bool]:
    """The whole request body (and whether it stayed under MAX_PREDICT_BODY_BYTES)."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size <= MAX_PREDICT_BODY_BYTES:
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks), size <= MAX_PREDICT_BODY_BYTES


async def _respond(send, status: int, body: bytes, content_type: str = "application/json") -> None:
    await send(
        {"type": "http.response.start", "status": status, "headers": [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]}
    )
    await send({"type": "http.response.body", "body": body})


def _json(payload: dict) -> bytes:
    return json.dumps(payload).encode()


class ServingMiddleware:
    """ASGI middleware: /metrics, /health, upload bookkeeping and size limit, request-body checks."""

    def __init__(self, app, state: ServingState):
        self.app = app
        self.state = state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, method = scope["path"], scope["method"]
        if method == "GET" and path == "/metrics":
            return await _respond(send, 200, self.state.metrics.exposition(), METRICS_CONTENT_TYPE)
        if method == "GET" and path == "/health":
            readiness = self.state.readiness
            return await _respond(send, 200 if readiness.ready else 503, _json(readiness.body()))
        if method == "POST" and _UPLOAD_ROUTE.search(path):
            return await self._upload(scope, receive, send)
        if method == "POST" and (match := _PREDICT_ROUTE.search(path)):
            return await self._predict(scope, receive, send, match)
        return await self.app(scope, receive, send)

    async def _refuse(self, send, refusal: Refusal) -> None:
        self.state.metrics.observe_failure("refused", reason=refusal.reason)
        logger.info("Refused a request: %s", refusal.reason)
        await _respond(send, refusal.status, _json({"error": refusal.message, "reason": refusal.reason}))

    async def _predict(self, scope, receive, send, match: re.Match) -> None:
        body, complete = await _read_body(receive)
        if not complete:
            return await self._refuse(send, Refusal(413, "malformed_payload", f"Request bodies are limited to {MAX_PREDICT_BODY_BYTES} bytes; upload audio to /gradio_api/upload."))
        is_v2 = match.group(3) is not None
        api_name = match.group(2) or match.group(3)
        try:
            fn_index = json.loads(body).get("fn_index")
        except (ValueError, AttributeError, UnicodeDecodeError):
            fn_index = None
        if fn_index is not None:
            # Like Gradio: a body's fn_index wins over the route's name (the UI posts example
            # clicks to /run/predict with the examples handler's fn_index).
            api_name = None
        endpoint = self.state.endpoint(fn_index, api_name)
        refusal = check_body(body, endpoint, self.state.uploads, data_key=not is_v2)
        if refusal is not None:
            return await self._refuse(send, refusal)
        if (slices := live_slices(body, endpoint)) is not None:
            self.state.uploads.claim(*slices)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _upload(self, scope, receive, send) -> None:
        limit = upload_limit_bytes(self.state.max_upload_mb)
        too_large = (
            f"The upload is larger than the {self.state.max_upload_mb:g} MB limit (--max_upload_mb / $SER_MAX_UPLOAD_MB)."
        )
        headers = dict(scope.get("headers") or [])
        try:
            declared = int(headers.get(b"content-length", b"-1"))
        except ValueError:
            declared = -1
        if declared > limit + _MULTIPART_SLACK_BYTES:
            # Refused before reading a byte: no disk, no CPU spent on it.
            self.state.metrics.observe_failure("refused", reason="upload_too_large")
            return await _respond(send, 413, too_large.encode(), "text/plain; charset=utf-8")
        status = 0
        start_message: dict | None = None
        chunks: list[bytes] = []

        async def capture(message):
            nonlocal status, start_message
            if message["type"] == "http.response.start":
                status, start_message = message["status"], message
                return
            if message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                body = b"".join(chunks)
                if status == 200:
                    try:
                        paths = json.loads(body)
                        self.state.uploads.register([path for path in paths if isinstance(path, str)])
                    except (ValueError, TypeError):
                        logger.warning("Unexpected upload response; its files are left to the sweeper")
                elif status == 413:
                    self.state.metrics.observe_failure("refused", reason="upload_too_large")
                    body = too_large.encode()
                    start_message = dict(start_message, headers=[(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())])
                await send(start_message)
                await send({"type": "http.response.body", "body": body})
                return
            await send(message)

        await self.app(scope, receive, capture)


def create_serving(
    classifier,
    config: ServingConfig,
    confidence_threshold: float,
    concurrency_limit: int,
    user_errors: tuple[type[BaseException], ...] = (),
    example_files: Iterable[str | Path] = (),
    live_sessions: LiveSessions | None = None,
) -> tuple[ServingState, RequestGuard]:
    """The per-app serving state (private metrics registry, upload registry, readiness) and guard.

    ``example_files``: the app's example clips; uploads identical to one are never deleted.

    ``live_sessions``: live mode's sessions, counted in ``/metrics`` and ``/health``.

    ``classifier`` is already loaded and warmed up, so the app reports ready from here on.
    """
    from gradio.utils import get_upload_folder

    prior = load_class_prior(classifier.name if Path(classifier.name).is_dir() else None, classifier.labels)
    if prior.source.startswith("uniform"):
        logger.info("Drift is measured against a %s", prior.source)
    metrics = AppMetrics(classifier.labels, prior, confidence_threshold, config.drift_window)
    uploads = UploadRegistry(get_upload_folder(), config.upload_ttl_s, example_files)
    readiness = Readiness()
    choice = getattr(classifier, "backend_choice", None)
    readiness.mark_ready(
        Path(classifier.name).name if Path(classifier.name).is_dir() else classifier.name,
        classifier.backend,
        choice.to_dict() if choice is not None else None,
    )
    if live_sessions is not None:
        metrics.track_live_sessions(live_sessions.recording, live_sessions.__len__)
        readiness.live_sessions = lambda: {"recording": live_sessions.recording(), "limit": live_sessions.limit}
    state = ServingState(metrics, uploads, readiness, config.max_upload_mb, live_sessions)
    guard = RequestGuard(metrics, uploads, config.request_timeout_s, concurrency_limit, user_errors)
    return state, guard


def launch_kwargs(state: ServingState) -> dict:
    """What ``demo.launch`` needs: the upload limit and the middleware (which also starts the sweeper)."""
    from starlette.middleware import Middleware

    state.uploads.start_sweeper()
    return {
        "max_file_size": upload_limit_bytes(state.max_upload_mb),
        "app_kwargs": {"middleware": [Middleware(ServingMiddleware, state=state)]},
    }
