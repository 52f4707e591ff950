"""Training: energy loss, learning-rate schedule, optimizer, checkpoints and the training loop."""
