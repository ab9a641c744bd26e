"""Running a trained model: the classifier, its serving backends and the hardware they pick from, the
quality gate and confidence rule, utterance embeddings and their adaptation, long-recording timelines."""
