"""audiomoe.data."""
