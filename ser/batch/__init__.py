"""Batch prediction: inputs and result files (io), the shared decode-and-score loop (scoring), and the
engines that drive it (local, adapted, ray_engine). ``python -m ser.predict`` picks the engine."""
