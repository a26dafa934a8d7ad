"""``audiomoe demo``: the toy-scale comparison of the MoE-Adapter with dense adapters (see :mod:`.pipeline`).

Modules, in pipeline order: :mod:`.settings`, :mod:`.corpus`, :mod:`.foundation`, :mod:`.encoding`,
:mod:`.arms`, :mod:`.analysis` with :mod:`.claims`, :mod:`.report`; :mod:`.pipeline` runs them.
"""

from audiomoe.recipes.demo.pipeline import run_demo

__all__ = ["run_demo"]
