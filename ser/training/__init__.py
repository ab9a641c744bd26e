"""Training pieces train.py puts together: arguments, datasets and collators, the Trainer, the run card."""
