"""The package's own architectures, registered with the transformers Auto classes on import,
so ``AutoModelForAudioClassification.from_pretrained`` loads them like any hub checkpoint."""

from transformers import AutoConfig, AutoModelForAudioClassification

from .emotion_cnn import EmotionCnnConfig, EmotionCnnForAudioClassification
from .whisper_ser import WhisperSerConfig, WhisperSerForAudioClassification

AutoConfig.register(EmotionCnnConfig.model_type, EmotionCnnConfig, exist_ok=True)
AutoModelForAudioClassification.register(EmotionCnnConfig, EmotionCnnForAudioClassification, exist_ok=True)
AutoConfig.register(WhisperSerConfig.model_type, WhisperSerConfig, exist_ok=True)
AutoModelForAudioClassification.register(WhisperSerConfig, WhisperSerForAudioClassification, exist_ok=True)

__all__ = ["EmotionCnnConfig", "EmotionCnnForAudioClassification", "WhisperSerConfig", "WhisperSerForAudioClassification"]
