"""audiomoe: Large Audio Language Models with a sparse Mixture-of-Experts adapter.

Packages, one per concern: ``adapters`` (MoE and dense connectors), ``models`` (encoders, LLMs, the assembled
LALM), ``data`` (manifests, audio I/O, tasks, the built-in corpus), ``training``, ``evaluation``, ``analysis``
and ``cli``; below them the helpers ``config``, ``runtime``, ``tensors``, ``text`` and ``plugins``. Which may
import which: docs/architecture.md (enforced by tests/test_layering.py).
"""

__version__ = "0.1.0"
