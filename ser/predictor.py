"""The public import path of the classifier: ``from ser.predictor import EmotionClassifier``.

The implementation lives in :mod:`ser.inference.predictor`; this module keeps the documented
path working after the package was split into layers."""

from ser.inference.predictor import (
    BUNDLED_MODEL_DIR,
    MODEL_ENV_VAR,
    EmotionClassifier,
    ModelNotConfiguredError,
    Prediction,
    resolve_model_path,
)

__all__ = ["BUNDLED_MODEL_DIR", "MODEL_ENV_VAR", "EmotionClassifier", "ModelNotConfiguredError", "Prediction", "resolve_model_path"]
