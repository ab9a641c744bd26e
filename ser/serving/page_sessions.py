"""What happens when a page goes away (tab closed or reloaded, connection lost): Gradio runs the page's
``unload`` event once its heartbeat connection ends. The app frees what it keeps for that page (live
mode's session) and Gradio's own state of it, which Gradio would otherwise keep: an hour for the
``gr.State`` values, and the per-page copy of the app's configuration (~0.1-0.5 MB with a plot in it)
until 10,000 newer sessions push it out."""

from __future__ import annotations

import logging
from collections.abc import Callable

import gradio as gr

logger = logging.getLogger(__name__)


def forget_gradio_session(demo: gr.Blocks, session_hash: str) -> bool:
    """Drop Gradio's state of one browser session (``Blocks.state_holder``); whether it held any."""
    holder = getattr(demo, "state_holder", None)
    if holder is None or not hasattr(holder, "session_data"):
        return False
    with holder.lock:
        state = holder.session_data.pop(session_hash, None)
        holder.time_last_used.pop(session_hash, None)
    return state is not None


def free_closed_pages(demo: gr.Blocks, *on_close: Callable[[gr.Request], None]) -> None:
    """On each page's unload: run ``on_close`` (each panel's own clean-up), then forget Gradio's state of it."""

    def page_closed(request: gr.Request) -> None:
        for callback in on_close:
            callback(request)
        if request.session_hash and forget_gradio_session(demo, request.session_hash):
            logger.debug("Freed the state of a closed page")

    demo.unload(page_closed)
