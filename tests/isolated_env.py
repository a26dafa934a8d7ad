"""A Python environment that sees only given distributions and their dependencies (no audiomoe, no peft).

``site_with(tmp, ["torch", "transformers"])`` links the top-level modules and ``.dist-info`` folders of those
distributions and everything they require (markers evaluated, extras skipped) into one folder; a subprocess run as
``python -I -S`` with only that folder on ``sys.path`` is then the venv the issue asks for: ``-I`` drops
``PYTHONPATH`` and the user site, ``-S`` skips ``site`` so no ``.pth`` file (the editable audiomoe install) runs.
"""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement


def _closure(names: list[str]) -> dict[str, metadata.Distribution]:
    found: dict[str, metadata.Distribution] = {}
    todo = list(names)
    while todo:
        name = todo.pop()
        key = name.lower().replace("_", "-")
        if key in found:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional dependency not installed here: the environment lacks it too
        found[key] = dist
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return found


def _top_level(dist: metadata.Distribution) -> set[str]:
    tops = set()
    for file in dist.files or []:
        first = file.parts[0]
        if (
            first.endswith((".dist-info", ".egg-info"))
            or first in ("..", "__pycache__")
            or first.endswith(".pth")
        ):
            continue
        tops.add(first)
    return tops


def site_with(folder: Path, names: list[str]) -> Path:
    """Link ``names`` and their dependency closure into ``folder``; returns it."""
    folder.mkdir(parents=True, exist_ok=True)
    for dist in _closure(names).values():
        base = Path(dist.locate_file(""))
        info = Path(dist._path)  # the .dist-info folder  # noqa: SLF001
        entries = {info.name: info} | {top: base / top for top in _top_level(dist)}
        for name, source in entries.items():
            target = folder / name
            if source.exists() and not target.exists():
                target.symlink_to(source)
    return folder


def run_isolated(site: Path, script: str, env: dict[str, str], timeout: int = 300) -> str:
    """Run ``script`` in ``python -I -S`` seeing only the standard library and ``site``; returns stdout."""
    prelude = f"import sys; sys.path.insert(0, {str(site)!r})\n"
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", prelude + script],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    if done.returncode:
        raise AssertionError(
            f"isolated run failed ({done.returncode}):\n{done.stdout}\n{done.stderr[-4000:]}"
        )
    return done.stdout
