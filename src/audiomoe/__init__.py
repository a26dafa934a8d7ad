"""audiomoe: Large Audio Language Models with a sparse Mixture-of-Experts adapter.

Packages, one per concern: ``adapters`` (MoE and dense connectors), ``models`` (encoders, LLMs, the assembled
LALM), ``data`` (manifests, audio I/O, tasks, the built-in corpus), ``training``, ``evaluation``, ``analysis``
and ``cli``.
"""

__version__ = "0.1.0"
