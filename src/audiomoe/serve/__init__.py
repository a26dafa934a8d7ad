"""Serving a saved model: an OpenAI-compatible HTTP API with dynamic batching, and a browser playground that
shows the MoE adapter's routing of each clip (``audiomoe serve``; see docs/serve.md).

- :mod:`audiomoe.serve.app`: the FastAPI application (:func:`create_app`, :class:`ServeSettings`);
- :mod:`audiomoe.serve.batcher`: the dynamic batcher over ``AudioLanguageModel.generate``;
- :mod:`audiomoe.serve.protocol`: OpenAI's request and response shapes; :mod:`audiomoe.serve.audio`: base64 audio;
- :mod:`audiomoe.serve.routing`: one clip's routing and its figure; ``static/``: the playground page.

Needs the ``serve`` extra (fastapi, uvicorn).
"""
