"""Request bodies checked before Gradio sees them: file values must be paths of our own uploads."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any

from ser.serving.uploads import UploadRegistry

logger = logging.getLogger(__name__)


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
    #: A microphone stream's handler: its file inputs are live slices (``UploadRegistry.claim``).
    streaming: bool = False


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
        streaming = any(target[1] == "stream" for target in getattr(fn, "targets", ()) or ())
        endpoint = Endpoint(len(fn.inputs), file_inputs, streaming)
        by_index[index] = endpoint
        if isinstance(fn.api_name, str) and fn.api_name:
            by_name[fn.api_name] = endpoint
    return by_index, by_name


def live_slices(body: bytes, endpoint: Endpoint | None) -> tuple[str, list[str]] | None:
    """(browser session, uploaded paths) of a microphone stream's slice body, else ``None``."""
    if endpoint is None or not endpoint.streaming:
        return None
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    session = payload.get("session_hash") if isinstance(payload, dict) else None
    if not isinstance(session, str) or not session:
        return None
    return session, [item["path"] for item in _file_objects(payload.get("data")) if isinstance(item.get("path"), str)]


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


