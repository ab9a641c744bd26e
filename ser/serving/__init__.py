"""What the Space needs beyond the model: limits and uploads, request checks, monitoring,
per-visitor calibration, and a dev server for tests and benchmarks."""
