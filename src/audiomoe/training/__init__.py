"""audiomoe.training."""
