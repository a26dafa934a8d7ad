"""audiomoe.models."""
