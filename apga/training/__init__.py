"""The training loop every method runs on, its checkpoints and its precision."""
