"""audiomoe.adapters."""
