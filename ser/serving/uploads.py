"""Uploaded files: reference-counted, deleted as soon as the request that used them has its answer."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ser.serving.limits import DEFAULT_UPLOAD_TTL_S

logger = logging.getLogger(__name__)


# -- uploads -----------------------------------------------------------------------------------

#: An upload folder left empty this long (seconds) is removed by the sweep.
EMPTY_FOLDER_AGE_S = 60.0


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
        #: Live-mode slices by browser session: owner -> {path key: when each unread use was claimed}.
        #: Identical slices (digital silence) share one path, so a path can be claimed more than once.
        self._claims: dict[str, dict[str, list[float]]] = {}
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

    def claim(self, owner: str, paths: Iterable[str]) -> None:
        """Live-mode slices sent by browser session ``owner``. Gradio keeps only the newest slice of a
        stream that is waiting for its handler, so a slice can be uploaded and never read: whatever
        ``owner`` still has unread when its recording ends is deleted by :meth:`release_claims`."""
        now = time.monotonic()
        with self._lock:
            claims = self._claims.setdefault(owner, {})
            for path in paths:
                claims.setdefault(str(Path(path).resolve()), []).append(now)

    def release_claims(self, owner: str, claimed_before: float | None = None) -> int:
        """Delete ``owner``'s slices that no handler read (claimed before ``claimed_before``, a
        ``time.monotonic()`` value, when given: a new recording's slices stay); how many files went."""
        stale: list[str] = []
        with self._lock:
            claims = self._claims.get(owner, {})
            for key, times in list(claims.items()):
                kept = [when for when in times if claimed_before is not None and when >= claimed_before]
                stale += [key] * (len(times) - len(kept))
                if kept:
                    claims[key] = kept
                else:
                    del claims[key]
            if not claims:
                self._claims.pop(owner, None)
        return sum(self.release(key) for key in stale)

    def release(self, path: str | Path | None, owner: str | None = None) -> bool:
        """One request that used ``path`` is done; delete the file when no other upload of it is pending.
        ``owner``: the browser session whose claimed slice this was (see :meth:`claim`)."""
        if not path:
            return False
        key = str(Path(path).resolve())
        with self._lock:
            times = self._claims.get(owner, {}).get(key) if owner is not None else None
            if times:
                times.pop(0)  # the oldest claim: slices are read in the order they were sent
                if not times:
                    del self._claims[owner][key]
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
        """Delete registered uploads older than ``ttl_s``, and upload folders left empty for a minute;
        returns how many files went."""
        now = time.monotonic() if now is None else now
        with self._lock:
            expired = [key for key, entry in self._pending.items() if now - entry.uploaded_at > self.ttl_s]
            for key in expired:
                del self._pending[key]
        deleted = sum(self._delete(Path(key)) for key in expired)
        self._remove_empty_folders(min_age_s=EMPTY_FOLDER_AGE_S)
        return deleted

    def _remove_empty_folders(self, min_age_s: float) -> None:
        cutoff = time.time() - min_age_s
        try:
            folders = [path for path in self.upload_dir.iterdir() if path.is_dir()]
        except OSError:
            return
        for folder in folders:
            try:
                if folder.stat().st_mtime < cutoff and not any(folder.iterdir()):
                    folder.rmdir()
            except OSError:
                pass  # filled or removed meanwhile

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
        # Gradio puts each upload in its own <hash>/ folder; the sweep removes it once empty, not here:
        # an identical upload arriving now (same bytes, same folder) would fail if it vanished under it.
        if removed:
            with self._lock:
                self.deleted += 1
        return removed


