"""Operating the Space safely: configurable limits, upload deletion, payload checks, /metrics and /health.

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

import concurrent.futures
import contextlib
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .monitoring import DEFAULT_DRIFT_WINDOW, METRICS_CONTENT_TYPE, AppMetrics, Readiness, load_class_prior

logger = logging.getLogger(__name__)

T = TypeVar("T")

# -- limits ------------------------------------------------------------------------------------

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


# -- uploads -----------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class _Pending:
    uses: int
    uploaded_at: float


class UploadRegistry:
    """Uploaded files and how many requests may still use each one; deletes them when done.

    ``register`` is called per upload, ``release`` after each answer that used the path. A path
    that never went through ``/gradio_api/upload`` (the example clips Gradio cached at start) is
    never deleted, and neither is a copy of one of ``keep_files``: an upload with the same name
    and bytes as an example clip lands on the example's own cached path (Gradio names upload
    folders by content hash), which the examples need. ``sweep`` removes registered uploads older
    than ``ttl_s`` (uploaded, never submitted).
    """

    def __init__(self, upload_dir: str | Path, ttl_s: float = DEFAULT_UPLOAD_TTL_S, keep_files: Iterable[str | Path] = ()):
        self.upload_dir = Path(upload_dir).resolve()
        self.ttl_s = ttl_s
        self._keep = {(Path(path).name, _sha256(Path(path))) for path in keep_files}
        self._pending: dict[str, _Pending] = {}
        self._lock = threading.Lock()
        self._sweeper: threading.Thread | None = None
        self.deleted = 0

    def contains(self, path: str | Path) -> bool:
        """Whether ``path`` resolves to a file inside the upload folder (symlinks and ``..`` resolved)."""
        try:
            resolved = Path(path).resolve()
        except (OSError, ValueError):
            return False
        return resolved != self.upload_dir and resolved.is_relative_to(self.upload_dir)

    def register(self, paths: list[str]) -> None:
        now = time.monotonic()
        with self._lock:
            for path in paths:
                key = str(Path(path).resolve())
                entry = self._pending.setdefault(key, _Pending(0, now))
                entry.uses += 1
                entry.uploaded_at = now

    def release(self, path: str | Path | None) -> bool:
        """One request that used ``path`` is done; delete the file when no other upload of it is pending."""
        if not path:
            return False
        key = str(Path(path).resolve())
        with self._lock:
            entry = self._pending.get(key)
            if entry is None:
                return False
            entry.uses -= 1
            if entry.uses > 0:
                return False
            del self._pending[key]
        return self._delete(Path(key))

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def sweep(self, now: float | None = None) -> int:
        """Delete registered uploads older than ``ttl_s``; returns how many files went."""
        now = time.monotonic() if now is None else now
        with self._lock:
            expired = [key for key, entry in self._pending.items() if now - entry.uploaded_at > self.ttl_s]
            for key in expired:
                del self._pending[key]
        return sum(self._delete(Path(key)) for key in expired)

    def start_sweeper(self) -> None:
        if self._sweeper is not None:
            return
        interval_s = max(1.0, min(60.0, self.ttl_s / 4))

        def loop() -> None:
            while True:
                time.sleep(interval_s)
                try:
                    self.sweep()
                except Exception:  # a failed sweep must not end the thread
                    logger.exception("Upload sweep failed")

        self._sweeper = threading.Thread(target=loop, name="upload-sweeper", daemon=True)
        self._sweeper.start()

    def is_kept(self, path: Path) -> bool:
        if not any(path.name == name for name, _ in self._keep):
            return False
        try:
            return (path.name, _sha256(path)) in self._keep
        except OSError:
            return False

    def _delete(self, path: Path) -> bool:
        if self.is_kept(path):
            return False
        removed = False
        try:
            path.unlink()
            removed = True
        except FileNotFoundError:
            pass
        except OSError as error:
            logger.warning("Could not delete an upload (%s)", error.strerror)
        # Gradio puts each upload in its own <hash>/ folder: remove it once empty.
        parent = path.parent
        if parent != self.upload_dir and parent.is_relative_to(self.upload_dir):
            try:
                parent.rmdir()
            except OSError:
                pass  # not empty (another file) or already gone
        if removed:
            with self._lock:
                self.deleted += 1
        return removed


# -- request bodies ----------------------------------------------------------------------------

_FILE_DATA_TYPE = "gradio.FileData"


def _is_url(value: str) -> bool:
    return bool(re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", value)) or value.startswith("//")


def _file_objects(value: Any) -> list[dict]:
    """Every FileData-like dict in a JSON value (a ``path`` key, or ``meta._type == gradio.FileData``)."""
    found: list[dict] = []
    if isinstance(value, dict):
        meta = value.get("meta")
        if "path" in value or (isinstance(meta, dict) and meta.get("_type") == _FILE_DATA_TYPE):
            found.append(value)
        else:
            for item in value.values():
                found.extend(_file_objects(item))
    elif isinstance(value, list):
        for item in value:
            found.extend(_file_objects(item))
    return found


@dataclass(frozen=True)
class Refusal:
    status: int
    reason: str
    message: str


def check_file_object(file_object: dict, uploads: UploadRegistry) -> Refusal | None:
    path = file_object.get("path")
    if not isinstance(path, str) or not path:
        return Refusal(422, "malformed_payload", "A file value needs a 'path' string returned by POST /gradio_api/upload.")
    if _is_url(path):
        return Refusal(
            400, "url_input", "File URLs are not accepted (the server never fetches audio from elsewhere): upload the file to /gradio_api/upload and send the path it returns."
        )
    if not uploads.contains(path):
        return Refusal(
            400, "path_outside_uploads", "Only files uploaded to this server (POST /gradio_api/upload) are accepted as input."
        )
    return None


@dataclass(frozen=True)
class Endpoint:
    """What the middleware needs to know about one event handler: its arity and file inputs."""

    num_inputs: int
    file_inputs: frozenset[int]


def endpoints_of(blocks) -> tuple[dict[int, Endpoint], dict[str, Endpoint]]:
    """(by fn index, by api name) for every event handler of a ``gr.Blocks``."""
    from gradio.data_classes import FileData

    by_index: dict[int, Endpoint] = {}
    by_name: dict[str, Endpoint] = {}
    for index, fn in blocks.fns.items():
        file_inputs = frozenset(
            position
            for position, component in enumerate(fn.inputs)
            if isinstance(getattr(component, "data_model", None), type) and issubclass(component.data_model, FileData)
        )
        endpoint = Endpoint(len(fn.inputs), file_inputs)
        by_index[index] = endpoint
        if isinstance(fn.api_name, str) and fn.api_name:
            by_name[fn.api_name] = endpoint
    return by_index, by_name


def check_body(body: bytes, endpoint: Endpoint | None, uploads: UploadRegistry, data_key: bool = True) -> Refusal | None:
    """Refuse a prediction body with foreign files or the wrong shape; ``None`` lets it through.

    Unparsable JSON is left to Gradio, which already answers 422 for it.
    """
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if data_key and isinstance(payload, dict) and isinstance(payload.get("data"), list) and endpoint is not None:
        data = payload["data"]
        if len(data) != endpoint.num_inputs:
            return Refusal(422, "malformed_payload", f"This endpoint takes {endpoint.num_inputs} input value(s); got {len(data)}.")
        for position in endpoint.file_inputs:
            value = data[position]
            if value is not None and not (isinstance(value, dict) and "path" in value):
                return Refusal(
                    422,
                    "malformed_payload",
                    "The audio input must be null or a file object {\"path\": <path from /gradio_api/upload>, \"meta\": {\"_type\": \"gradio.FileData\"}}.",
                )
    for file_object in _file_objects(payload):
        refusal = check_file_object(file_object, uploads)
        if refusal is not None:
            return refusal
    return None


# -- the handler guard -------------------------------------------------------------------------


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name.removesuffix("Error")).lower()


def rejection_reason(error: BaseException) -> str:
    """A stable metric label for a refused input: the typed error's own ``code`` or its class name."""
    cause = error.__cause__ or error
    problems = getattr(getattr(cause, "report", None), "problems", None)
    if problems:  # ser.quality.UnusableAudioError: the gate's first stable problem code
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
        except self.user_errors as error:
            self.metrics.observe_failure("rejected_input", time.perf_counter() - started, reason=rejection_reason(error))
            raise
        except Exception:
            self.metrics.observe_failure("error", time.perf_counter() - started)
            raise
        finally:
            # Deleted before the answer leaves (so nothing is left once a client has it), except after a
            # timeout: then when the work really stops, never while it may still read the file.
            if timed_out:
                future.add_done_callback(lambda _: self.uploads.release(audio_path))
            else:
                self.uploads.release(audio_path)
        self.metrics.observe_answer(probabilities(result), time.perf_counter() - started)
        return result

    @contextlib.contextmanager
    def releasing(self, audio_path: str | None) -> Iterator[None]:
        """Delete the request's upload when the block ends (handlers that run without :meth:`run`)."""
        try:
            yield
        finally:
            self.uploads.release(audio_path)


# -- the ASGI middleware -----------------------------------------------------------------------

_PREDICT_ROUTE = re.compile(r"/gradio_api/(?:queue/join|(call|run|api)/([^/]+)|call/v2/([^/]+))/?$")
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
        refusal = check_body(body, self.state.endpoint(fn_index, api_name), self.state.uploads, data_key=not is_v2)
        if refusal is not None:
            return await self._refuse(send, refusal)
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
) -> tuple[ServingState, RequestGuard]:
    """The per-app serving state (private metrics registry, upload registry, readiness) and guard.

    ``example_files``: the app's example clips; uploads identical to one are never deleted.

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
    state = ServingState(metrics, uploads, readiness, config.max_upload_mb)
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
