"""Speech emotion recognition: the shared core of train.py, evaluate_crosslingual.py and app.py."""

from ser import models  # noqa: F401  (registers the package's architectures with the Auto classes)
