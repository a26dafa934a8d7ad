"""The demo's data: the built-in corpus (built once, reused) and its training manifest with ASR views."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from audiomoe.data.corpus import CORPUS_VERSION, build_corpus
from audiomoe.data.manifest import read_manifest, write_manifest
from audiomoe.data.tasks import get_task

TRANSCRIBE = "transcribe"


def ensure_corpus(
    directory: Path, clips: int, seed: int, splits: dict[str, float], extra_tasks: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Build the corpus unless one of the same size, seed, splits, extra tasks and corpus version is there."""
    summary_path = directory / "summary.json"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        summary.setdefault("extra_tasks", [])  # a summary written before extra tasks existed holds none
        wanted = {
            "n": clips,
            "seed": seed,
            "splits": splits,
            "version": CORPUS_VERSION,
            "extra_tasks": list(extra_tasks),
        }
        if all(summary.get(k) == v for k, v in wanted.items()) and all(
            (directory / f"{s}.jsonl").is_file() for s in splits
        ):
            summary["reused"] = True
            return summary
        shutil.rmtree(directory)  # an older or different corpus: rebuild it in place
    summary = dataclasses.asdict(build_corpus(directory, clips, seed, splits=splits, extra_tasks=extra_tasks))
    summary["reused"] = False
    return summary


def write_asr_views(train_manifest: Path, out: Path, seed: int = 0) -> dict[str, int]:
    """``train_manifest`` plus one transcription example for every training clip whose speech has a transcript
    but whose own task is another one (a gender or scene question about a spoken clip, say).

    This is the ASR stage every LALM recipe starts with (SALMONN, Qwen-Audio, SLAM-LLM), folded into one mixed
    stage: on the corpus alone only a fifteenth of the clips are transcription examples, too few to learn
    to read speech. The same clips, the same audio features (the cache is keyed by content), new targets; only
    the training split is touched, so dev and test stay exactly the corpus's."""
    # absolute paths in memory (a manifest read through a relative folder gives cwd-relative ones), stored
    # relative to ``out``'s folder like the corpus's own manifests
    records = [
        dataclasses.replace(r, audio=str(Path(r.audio).resolve())) for r in read_manifest(train_manifest)
    ]
    task = get_task(TRANSCRIBE)
    rng = np.random.default_rng([seed, 7])
    views = [
        dataclasses.replace(
            r,
            key=f"{r.key}-asr",
            task=TRANSCRIBE,
            instruction=task.instruction(rng),
            answer=r.transcript,
        )
        for r in records
        if r.transcript and r.task != TRANSCRIBE
    ]
    write_manifest(records + views, out)
    return {"records": len(records), "asr_views": len(views)}
