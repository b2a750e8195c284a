"""Training: the loop (trainer.py), the stages, checkpoints and state."""
