"""The example clips shown under the panels, as ``examples/examples.json`` lists them (written by
``python -m scripts.make_examples``): each file, the panel it belongs to, and the label the page
shows for it (actor, intended emotion, intensity)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

#: The manifest in the examples folder.
MANIFEST_NAME = "examples.json"
#: ``panel`` values: the single-clip panel and the long-recording (timeline) panel.
CLIP_PANEL, TIMELINE_PANEL = "clip", "timeline"


@dataclass(frozen=True)
class Example:
    path: Path
    label: str
    panel: str


def load_examples(directory: Path) -> list[Example]:
    """The examples whose files exist, in the manifest's order; none without a manifest."""
    manifest = Path(directory) / MANIFEST_NAME
    if not manifest.is_file():
        return []
    try:
        entries = json.loads(manifest.read_text())
        examples = [Example(Path(directory) / entry["file"], str(entry["label"]), str(entry["panel"])) for entry in entries]
    except (ValueError, KeyError, TypeError) as error:
        logger.warning("Ignoring the examples: %s is not a list of {file, label, panel} (%s)", manifest, error)
        return []
    missing = [example.path.name for example in examples if not example.path.is_file()]
    if missing:
        logger.warning("Example files listed in %s are missing: %s", manifest.name, ", ".join(missing))
    return [example for example in examples if example.path.is_file()]


def for_panel(examples: list[Example], panel: str) -> list[Example]:
    return [example for example in examples if example.panel == panel]
