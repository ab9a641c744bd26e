"""The bottom layer: the label set, metrics and standardisation statistics. Imports nothing else of ``ser``."""
