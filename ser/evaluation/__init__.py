"""Scoring a model on a labelled corpus: clip selection and inference, scores, robustness, reports and plots."""
