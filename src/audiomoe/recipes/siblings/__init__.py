"""``audiomoe siblings``: the seed paper's sibling methods measured on the demo's corpus (see :mod:`.pipeline`)."""

from audiomoe.recipes.siblings.pipeline import run_siblings

__all__ = ["run_siblings"]
