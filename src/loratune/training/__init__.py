"""The training loop (loop.py: `train`), its checkpoints and its progress reporting; nothing is imported here, so
loratune.training.lock or .checkpoint load without torch."""
