"""Streaming from WebDataset-style tar shards: written shards read back as the records they came from; each epoch's
shards are dealt to ranks disjointly and completely; the order is a function of the seed; a stream resumed from
its saved position continues with exactly the next batch; and `audiomoe train` on shards runs end to end,
skips a clip that does not decode, and resumes a stopped run to the same losses as an uninterrupted one."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audiomoe.cli.main import main as cli
from audiomoe.data.manifest import load_manifest
from audiomoe.data.shards import iter_samples, list_shards, write_shards
from audiomoe.training.checkpoint import step_dir_name
from audiomoe.training.streaming import ShardStream


def write_corpus(root: Path, n: int = 12) -> Path:
    """``n`` tones as a native JSONL manifest (transcription-style answers), keys ``k00``..."""
    (root / "clips").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        t = np.arange(4000 + 400 * (i % 5)) / 16000
        sf.write(root / "clips" / f"k{i:02d}.wav", 0.3 * np.sin(2 * np.pi * (200 + 40 * i) * t), 16000)
        lines.append(json.dumps({"key": f"k{i:02d}", "audio": f"clips/k{i:02d}.wav", "task": "transcribe",
                                 "instruction": "Transcribe the audio.", "answer": f"tone {i}"}))  # fmt: skip
    manifest = root / "train.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


class KeyStream(ShardStream):
    """The shard stream with batches as their record keys (no decoding): for order and resume checks."""

    def __init__(self, shards: list[Path], **kwargs: object) -> None:
        super().__init__(shards, processor=None, **kwargs)  # type: ignore[arg-type]

    def _decode(self, samples: list) -> list[str]:
        return [s.key for s in samples]


def fake_shards(root: Path, sizes: list[int]) -> list[Path]:
    """Shards of bare members (``KEY.json`` + ``KEY.wav`` of a few bytes): enough for the order logic."""
    shards = []
    for number, size in enumerate(sizes):
        path = root / f"s-{number:06d}.tar"
        with tarfile.open(path, "w") as archive:
            for i in range(size):
                for ext in ("json", "wav"):
                    (root / "m").write_bytes(b"{}")
                    archive.add(root / "m", arcname=f"s{number}r{i:02d}.{ext}")
        shards.append(path)
    return shards


def test_shards_round_trip_the_records_and_read_as_a_source(tmp_path: Path) -> None:
    manifest = write_corpus(tmp_path, 7)
    records = load_manifest(manifest).records
    shards = write_shards(records, tmp_path / "shards", shard_size=3)
    assert [p.name for p in shards] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert list_shards(tmp_path / "shards") == shards == list_shards(str(tmp_path / "shards" / "shard-*.tar"))
    members = [(key, sorted(files)) for key, files in iter_samples(shards[1])]
    assert members == [("k03", ["json", "wav"]), ("k04", ["json", "wav"]), ("k05", ["json", "wav"])]
    assert dict(iter_samples(shards[0]))["k00"]["wav"] == (tmp_path / "clips" / "k00.wav").read_bytes()
    # as a listed source (validate / convert / eval): the same records, clips extracted to the audio cache
    back = load_manifest(tmp_path / "shards").records
    assert [(r.key, r.answer, r.task) for r in back] == [(r.key, r.answer, r.task) for r in records]
    assert Path(back[2].audio).read_bytes() == Path(records[2].audio).read_bytes()
    assert cli(["data", "shard", str(manifest), str(tmp_path / "cli"), "--shard-size", "4"]) == 0
    assert len(list_shards(tmp_path / "cli")) == 2


def epoch_keys(stream: ShardStream) -> list[str]:
    """Every key of one epoch (the stream starts at an epoch boundary)."""
    start, keys = stream.epoch, []
    while stream.epoch == start:
        keys += next(stream)
    return keys


def test_ranks_get_disjoint_shards_that_together_are_the_whole_epoch(tmp_path: Path) -> None:
    shards = fake_shards(tmp_path, [3, 4, 2, 5, 3])
    everything = sorted(key for s in shards for key, _ in iter_samples(s))
    for epoch in range(3):
        ranks = [
            KeyStream(shards, batch_size=2, seed=5, rank=r, world_size=2, shuffle_buffer=4) for r in (0, 1)
        ]
        per_rank = [r.rank_shards(epoch) for r in ranks]
        assert not set(per_rank[0]) & set(per_rank[1]) and sorted(per_rank[0] + per_rank[1]) == shards
        for stream in ranks:
            stream.epoch = epoch
        keys = [epoch_keys(stream) for stream in ranks]
        assert not set(keys[0]) & set(keys[1]) and sorted(keys[0] + keys[1]) == everything
    with pytest.raises(ValueError, match="every rank needs at least one shard"):
        KeyStream(shards[:1], batch_size=2, world_size=2)


def test_order_is_a_function_of_the_seed_and_epochs_differ(tmp_path: Path) -> None:
    shards = fake_shards(tmp_path, [4, 4, 4])
    first = epoch_keys(KeyStream(shards, batch_size=3, seed=1, shuffle_buffer=5))
    assert first == epoch_keys(KeyStream(shards, batch_size=3, seed=1, shuffle_buffer=5))
    assert first != epoch_keys(KeyStream(shards, batch_size=3, seed=2, shuffle_buffer=5))
    stream = KeyStream(shards, batch_size=3, seed=1, shuffle_buffer=5)
    assert epoch_keys(stream) == first and sorted(epoch_keys(stream)) == sorted(first) != epoch_keys(stream)


@pytest.mark.parametrize("stop_after", [1, 2, 3, 5, 7])
def test_a_resumed_stream_continues_with_exactly_the_next_batch(tmp_path: Path, stop_after: int) -> None:
    """Batches of 3 over windows of 5 over shards of 4, 3, 5 records: resumes land inside windows, at window and
    shard boundaries and across an epoch end (12 records = 4 batches per epoch)."""
    shards = fake_shards(tmp_path, [4, 3, 5])
    kwargs = {"batch_size": 3, "seed": 7, "shuffle_buffer": 5}
    whole = KeyStream(shards, **kwargs)
    expected = [next(whole) for _ in range(10)]
    first = KeyStream(shards, **kwargs)
    assert [next(first) for _ in range(stop_after)] == expected[:stop_after]
    state = json.loads(json.dumps(first.state_dict()))  # what a checkpoint keeps
    resumed = KeyStream(shards, **kwargs)
    resumed.load_state_dict(state)
    assert [next(resumed) for _ in range(10 - stop_after)] == expected[stop_after:]


def train_config(root: Path, source: str, steps: int, extra: str = "") -> Path:
    config = root / "train.yaml"
    config.write_text(
        f"model: {{preset: tiny}}\ndata: {{train: [{source}], batch_size: 2, shuffle_buffer: 5{extra}}}\n"
        f"out_dir: {root / 'run'}\nsteps: {steps}\nlog_every: 1\ncheckpoint_every: 3\nprogress: false\n"
        "tensorboard: false\nseed: 3\n"
    )
    return config


def losses(run: Path) -> dict[int, float]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in lines if "loss" in r and r.get("split", "train") == "train"}


def test_train_streams_shards_skips_a_bad_clip_and_a_stopped_run_resumes_to_the_same_losses(
    tmp_path: Path,
) -> None:
    records = load_manifest(write_corpus(tmp_path, 11)).records
    (tmp_path / "clips" / "k04.wav").write_bytes(b"RIFF not audio")  # corrupted before sharding
    write_shards(records, tmp_path / "shards", shard_size=3)
    source = f"{{path: {tmp_path / 'shards'}, format: shards}}"
    config = train_config(tmp_path, source, 6, ", on_bad_line: skip")
    assert cli(["train", "--config", str(config)]) == 0
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["train_items"] is None and summary["skipped_clips"] == 1
    assert "k04" in summary["skip_reasons"][0]
    whole = losses(run)
    assert len(whole) == 6 and all(np.isfinite(list(whole.values())))
    # stop after step 3 (mid-epoch: 10 good records in batches of 2), then --resume to step 6
    shutil.rmtree(run / "checkpoints" / step_dir_name(6))
    assert cli(["train", "--config", str(config), "--resume"]) == 0
    resumed = losses(run)
    assert [resumed[s] for s in (4, 5, 6)] == pytest.approx([whole[s] for s in (4, 5, 6)], abs=1e-6)
    assert (run / "checkpoints" / step_dir_name(6) / "stream_rank0.pt").is_file()
    # without skip, the bad clip stops the run with one line naming it
    shutil.rmtree(run)
    assert cli(["train", "--config", str(train_config(tmp_path, source, 6))]) == 2


@pytest.mark.slow  # torchrun starts two ranks twice (~20 s on 2 cores)
def test_two_processes_stream_their_own_shards_and_each_resumes_at_its_own_position(tmp_path: Path) -> None:
    """torchrun, 2 gloo ranks: each rank's position is saved (``stream_rank{r}.pt``, different positions since
    the ranks' shards differ in size) and a stopped run resumes to the same losses."""
    import os
    import subprocess
    import sys

    from audiomoe.training.checkpoint import load_object
    from test_train_ddp import free_port

    records = load_manifest(write_corpus(tmp_path, 10)).records
    write_shards(records, tmp_path / "shards", shard_size=3)  # 3, 3, 3, 1 records: uneven ranks
    config = (
        train_config(tmp_path, str(tmp_path / "shards"), 4)
        .read_text()
        .replace("checkpoint_every: 3", "checkpoint_every: 2")
    )
    (tmp_path / "train.yaml").write_text(config)

    def launch(*extra: str) -> None:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={free_port()}", "-m", "audiomoe.cli.main", "train", "--config",
               str(tmp_path / "train.yaml"), *extra]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]

    launch()
    run = tmp_path / "run"
    whole = losses(run)
    states = [load_object(run / "checkpoints" / step_dir_name(2) / f"stream_rank{r}.pt") for r in (0, 1)]
    assert states[0] != states[1]
    shutil.rmtree(run / "checkpoints" / step_dir_name(4))
    launch("--resume")
    assert [losses(run)[s] for s in (3, 4)] == pytest.approx([whole[s] for s in (3, 4)], abs=1e-6)
