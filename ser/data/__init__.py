"""Corpora on disk: class folders, speakers and corpora parsed from file names, speaker-independent splits."""
