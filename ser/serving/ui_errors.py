"""The UI edge: typed errors from the library become ``gr.Error`` here, and only here."""

from __future__ import annotations

import gradio as gr


def user_error(message: str) -> gr.Error:
    """A refusal shown on the page and returned by the API. No traceback in the log: the guard
    (:mod:`ser.serving.guard`) already logged it as one line with its reason."""
    return gr.Error(message, print_exception=False)
