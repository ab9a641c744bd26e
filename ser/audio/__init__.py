"""Audio in: the one loader (any file -> 16 kHz mono float32) and waveform augmentations."""
