"""audiomoe.analysis."""
