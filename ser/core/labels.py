"""The emotion label set, defined once.

Every corpus names its classes differently (``Angry`` in Audio Emotions, ``anger`` in AESDD,
``happiness`` vs ``happy``...). They are all mapped onto these canonical names; a trained
model stores its own subset in ``config.id2label`` and that is what every script reads back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

#: Canonical names, in the fixed order used for new models.
CANONICAL_LABELS: tuple[str, ...] = ("angry", "disgusted", "fearful", "happy", "neutral", "sad", "surprised")

#: Left out by default: the thesis (and this product) classify six emotions.
DEFAULT_EXCLUDED_LABELS: tuple[str, ...] = ("surprised",)

DEFAULT_LABELS: tuple[str, ...] = tuple(label for label in CANONICAL_LABELS if label not in DEFAULT_EXCLUDED_LABELS)

_ALIASES: dict[str, str] = {
    "anger": "angry",
    "angry": "angry",
    "disgust": "disgusted",
    "disgusted": "disgusted",
    "fear": "fearful",
    "fearful": "fearful",
    "happiness": "happy",
    "happy": "happy",
    "joy": "happy",
    "neutral": "neutral",
    "sadness": "sad",
    "sad": "sad",
    "surprise": "surprised",
    "surprised": "surprised",
}


def canonical_label(name: str) -> str | None:
    """Map a class name from any supported corpus onto a canonical label (``None`` if unknown)."""
    return _ALIASES.get(name.strip().lower())


def parse_label_map(spec: str | Mapping[str, str] | None) -> dict[str, str]:
    """Parse a user label map given as a dict, a JSON object, or ``"a=b,c=d"``; keys are lower-cased."""
    if spec is None or spec == "":
        return {}
    if isinstance(spec, Mapping):
        items = dict(spec)
    else:
        text = spec.strip()
        if text.startswith("{"):
            import json

            items = json.loads(text)
        else:
            items = {}
            for pair in text.split(","):
                if "=" not in pair:
                    raise ValueError(f"Label map entry {pair!r} is not of the form folder=label (e.g. 'anger=angry,joy=happy').")
                key, value = pair.split("=", 1)
                items[key.strip()] = value.strip()
    return {str(key).strip().lower(): str(value).strip() for key, value in items.items()}


def label_maps(labels: Iterable[str]) -> tuple[dict[int, str], dict[str, int]]:
    """``(id2label, label2id)`` for a model config, in the order given."""
    ordered = list(labels)
    return dict(enumerate(ordered)), {label: index for index, label in enumerate(ordered)}
