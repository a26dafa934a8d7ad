"""audiomoe.evaluation."""
