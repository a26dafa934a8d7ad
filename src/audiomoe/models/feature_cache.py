"""Frozen-encoder feature cache: encoder outputs computed once, memory-mapped from disk, reused by every epoch
and every adapter variant trained on the same encoder.

Layout under ``root``::

    root/<encoder id>/shard_00000.npy    (frames, C) float16/float32, every clip's valid frames back to back
    root/<encoder id>/shard_00000.json   {audio sha256: [start row, frames, input length]}

- *audio key*: sha256 of the audio file's bytes (same content under another name is a hit; an edited file a miss);
- *encoder id*: sha256 of the encoder's class, the behaviour fields of its
  :class:`~audiomoe.models.base.EncoderConfig` (``trim_to_clip``, layer mix; not where it was loaded from), its
  transformers config and every weight tensor's bytes, so another checkpoint, another length policy or a retrained
  encoder never reads stale features, while a saved-and-reloaded model finds its features again;
- shards are written to a temp name and renamed into place, so a crash leaves no half shard; new clips go to a
  new shard, so a cache grows without rewriting.

Only frames inside the clip are stored (``encoder_mask`` True); batches are re-padded on read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from audiomoe.config import to_dict
from audiomoe.data.audio import load_audio

DTYPES = {"float16": np.float16, "float32": np.float32}


def audio_key(path: str | Path) -> str:
    """sha256 of the file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def encoder_identity(encoder: torch.nn.Module) -> str:
    """sha256 over the encoder's class, configs and weights (see the module docstring)."""
    digest = hashlib.sha256(type(encoder).__qualname__.encode())
    config = getattr(encoder, "config", None)
    if config is not None:
        # Where the weights came from (path / config dict) does not matter, what they are does (hashed below).
        # Fields at their default are left out: an option added later (at a default that keeps the old
        # behaviour) must not invalidate every cache written before it existed.
        defaults = to_dict(type(config)()) if dataclasses.is_dataclass(config) else {}
        behaviour = {
            k: v
            for k, v in to_dict(config).items()
            if k not in ("path", "config") and (k not in defaults or v != defaults[k])
        }
        digest.update(json.dumps(behaviour, sort_keys=True, default=str).encode())
    for name, module in encoder.named_modules():
        hf_config = getattr(module, "config", None)
        if hf_config is not None and hasattr(hf_config, "to_json_string"):
            digest.update(name.encode() + hf_config.to_json_string(use_diff=False).encode())
    for name, tensor in sorted(encoder.state_dict().items()):
        digest.update(name.encode() + str(tensor.dtype).encode() + str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class CachedClip:
    """``frames``: ``(T_enc, C)`` encoder outputs of one clip (a read-only memmap view); ``input_length``: the
    valid encoder-input frames (mel frames) the clip had, what the processor needs to count its audio tokens."""

    frames: np.ndarray
    input_length: int


class FeatureCache:
    """Cache of one frozen encoder's outputs. ``ensure(paths)`` fills it, ``get(path)`` reads one clip."""

    def __init__(
        self, root: str | Path, model: torch.nn.Module, dtype: str = "float16", batch_size: int = 16
    ) -> None:
        """``model``: an :class:`~audiomoe.models.lalm.AudioLanguageModel` (its ``encoder``, ``processor`` and
        ``encode_audio`` are used). Raises ValueError if any encoder parameter trains."""
        if any(p.requires_grad for p in model.encoder.parameters()):
            raise ValueError(
                "the feature cache needs a frozen encoder (freeze.encoder=true, no encoder LoRA); "
                "set data.feature_cache='' to encode on the fly"
            )
        if dtype not in DTYPES:
            raise ValueError(f"feature cache dtype {dtype!r}: choose one of {sorted(DTYPES)}")
        self.model = model
        self.dtype = DTYPES[dtype]
        self.batch_size = batch_size
        self.identity = encoder_identity(model.encoder)
        self.dir = Path(root) / self.identity[:20]
        self.dir.mkdir(parents=True, exist_ok=True)
        self._index: dict[str, tuple[int, int, int, int]] = {}  # key -> (shard, start, frames, input length)
        self._shards: list[np.ndarray] = []
        self._keys: dict[str, str] = {}  # path -> audio key (hashing a file once per process)
        self._load_shards()

    def _load_shards(self) -> None:
        self._index.clear()
        self._shards = []
        for index_path in sorted(self.dir.glob("shard_*.json")):
            array_path = index_path.with_suffix(".npy")
            if not array_path.is_file():
                continue  # an index without its array: a crash between the two renames; the clips are recomputed
            self._shards.append(np.load(array_path, mmap_mode="r"))
            for key, (start, frames, input_length) in json.loads(index_path.read_text()).items():
                self._index[key] = (len(self._shards) - 1, start, frames, input_length)

    def key(self, path: str | Path) -> str:
        path = str(path)
        if path not in self._keys:
            self._keys[path] = audio_key(path)
        return self._keys[path]

    def __contains__(self, path: str | Path) -> bool:
        return self.key(path) in self._index

    def __len__(self) -> int:
        return len(self._index)

    def get(self, path: str | Path) -> CachedClip:
        shard, start, frames, input_length = self._index[self.key(path)]
        return CachedClip(self._shards[shard][start : start + frames], input_length)

    @torch.no_grad()
    def ensure(self, paths: Sequence[str | Path], progress: bool = True) -> int:
        """Encode every clip of ``paths`` not cached yet (longest first, in batches) into a new shard.

        Returns the number of clips encoded (0 when everything was cached)."""
        todo: dict[str, str] = {}
        for path in paths:
            key = self.key(path)
            if key not in self._index:
                todo.setdefault(key, str(path))
        if not todo:
            return 0
        # similar lengths together (little padding), by file size: audio is decoded one batch at a time, so the
        # memory held is one batch of waveforms, not the whole corpus (3000 clips: ~0.5 GB of float32)
        order = sorted(todo, key=lambda k: -os.path.getsize(todo[k]))
        blocks: list[np.ndarray] = []
        index: dict[str, list[int]] = {}
        row = 0
        device = next(self.model.encoder.parameters()).device
        was_training = self.model.training
        self.model.eval()
        bar = tqdm(total=len(order), desc="encoder features", disable=not progress, leave=False)
        for begin in range(0, len(order), self.batch_size):
            keys = order[begin : begin + self.batch_size]
            features, lengths = self.model.processor.extract_features([load_audio(todo[k]) for k in keys])
            # fp32 whatever autocast the caller runs under: the cache's identity does not include a precision
            with torch.autocast(device.type, enabled=False):
                hidden, mask = self.model.encode_audio(features.to(device), lengths)
            hidden = hidden.float().cpu().numpy()
            valid = mask.sum(-1).tolist()
            for i, key in enumerate(keys):
                blocks.append(hidden[i, : valid[i]].astype(self.dtype))
                index[key] = [row, int(valid[i]), int(lengths[i])]
                row += valid[i]
            bar.update(len(keys))
        bar.close()
        self.model.train(was_training)
        self._write_shard(np.concatenate(blocks), index)
        self._load_shards()
        return len(order)

    def _write_shard(self, array: np.ndarray, index: dict[str, list[int]]) -> None:
        number = len(list(self.dir.glob("shard_*.json")))
        name = f"shard_{number:05d}"
        for suffix, write in (
            (".npy", lambda handle: np.save(handle, array)),
            (".json", lambda handle: handle.write(json.dumps(index).encode())),
        ):
            tmp = self.dir / f".tmp-{name}{suffix}"
            with open(tmp, "wb") as handle:
                write(handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.dir / f"{name}{suffix}")

    def batch(self, paths: Sequence[str | Path]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``encoder_hidden (N, T_max, C)`` float32, ``encoder_mask (N, T_max)`` bool and ``input_lengths (N,)``."""
        clips = [self.get(p) for p in paths]
        longest = max(c.frames.shape[0] for c in clips)
        hidden = np.zeros((len(clips), longest, clips[0].frames.shape[1]), dtype=np.float32)
        mask = np.zeros((len(clips), longest), dtype=bool)
        for i, clip in enumerate(clips):
            hidden[i, : clip.frames.shape[0]] = clip.frames
            mask[i, : clip.frames.shape[0]] = True
        lengths = torch.tensor([c.input_length for c in clips], dtype=torch.long)
        return torch.from_numpy(hidden), torch.from_numpy(mask), lengths
