"""Data-driven fault cases: fault -> command -> expected exit code and message, no traceback, no silent wrong.

Each case is one entry of ``CASES``: a ``setup(ctx)`` that plants the fault and returns the ``audiomoe`` command
line, the exit code the error contract promises (0 ok, 2 bad input, 3 environment), a pattern the one-line
message must match, and optionally a ``check(ctx, outcome)`` of what was (or was not) written.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import Outcome, classify, record, train_argv, train_rows
from safetensors.torch import load_file, save_file

from audiomoe.training import checkpoint as ckpt


@dataclass
class Ctx:
    """What a case may use: the shared corpus, a finished run to tamper with (a copy), a scratch folder."""

    corpus: Path
    run: Path
    tmp: Path
    monkeypatch: pytest.MonkeyPatch
    notes: dict[str, Any] = field(default_factory=dict)

    def resume(self, *extra: str) -> list[str]:
        return ["train", "--config", self.run / "config.yaml", f"out_dir={self.run}", *extra, "--resume"]

    def manifest(self, name: str, lines: list[str] | bytes) -> Path:
        path = self.tmp / name
        if isinstance(lines, bytes):
            path.write_bytes(lines)
        else:
            path.write_text("".join(line + "\n" for line in lines))
        return path

    def good_line(self, key: str = "g1", **changes: Any) -> str:
        row = {"key": key, "audio": str(self.corpus / "clip0.wav"), "task": "instrument",
               "instruction": "Which instrument is playing?", "answer": "piano", **changes}  # fmt: skip
        return json.dumps(row)


@dataclass
class Case:
    name: str
    setup: Callable[[Ctx], list[Any]]
    code: int
    pattern: str = ""
    check: Callable[[Ctx, Outcome], bool] | None = None


CASES: list[Case] = []


def case(name: str, code: int, pattern: str = "", check: Callable[[Ctx, Outcome], bool] | None = None):
    def add(setup: Callable[[Ctx], list[Any]]) -> Callable[[Ctx], list[Any]]:
        CASES.append(Case(name, setup, code, pattern, check))
        return setup

    return add


def checkpoints(run: Path) -> list[int]:
    return [step for step, _ in ckpt.list_checkpoints(run / "checkpoints")]


def no_temp_dirs(run: Path) -> bool:
    root = run / "checkpoints"
    return not root.exists() or not any(p.name.startswith(".tmp-") for p in root.iterdir())


# ------------------------------------------------------------------------------------------ data validate
@case("validate: non-UTF-8 line, the next manifest is still checked", 2, "",
      check=lambda c, o: ":2: not UTF-8 (byte 0xff" in o.out and ":3: " in o.out
      and f"{c.notes['second']}: ok" in o.err)  # fmt: skip
def _(c: Ctx) -> list[Any]:
    # line 3 (after the bad byte) is still read: its own problem is reported too
    bad = c.manifest("latin.jsonl", (c.good_line() + "\n").encode() + b'{"key": "\xff"}\n{"foo": 1}\n')
    c.notes["second"] = c.manifest("fine.jsonl", [c.good_line()])
    return ["data", "validate", bad, c.notes["second"]]


@case("validate: empty manifest", 2, "", check=lambda c, o: "manifest is empty" in o.out)
def _(c: Ctx) -> list[Any]:
    return ["data", "validate", c.manifest("empty.jsonl", b"")]


@case(
    "validate: duplicate JSON keys in one line",
    2,
    "",
    check=lambda c, o: "duplicate JSON key 'answer'" in o.out,
)
def _(c: Ctx) -> list[Any]:
    return ["data", "validate", c.manifest("dup.jsonl", [c.good_line()[:-1] + ', "answer": "flute"}'])]


@case(
    "validate: a 20 000-character answer", 2, "", check=lambda c, o: "more than the limit of 10000" in o.out
)
def _(c: Ctx) -> list[Any]:
    return ["data", "validate", c.manifest("long.jsonl", [c.good_line(answer="la " * 7000)])]


@case("validate: manifest is a directory", 2, "", check=lambda c, o: "is a directory" in o.out)
def _(c: Ctx) -> list[Any]:
    (c.tmp / "folder.jsonl").mkdir()
    return ["data", "validate", c.tmp / "folder.jsonl"]


@case("validate: manifest is a symlink loop", 2, "", check=lambda c, o: "symlink loop" in o.out)
def _(c: Ctx) -> list[Any]:
    os.symlink(c.tmp / "b.jsonl", c.tmp / "a.jsonl")
    os.symlink(c.tmp / "a.jsonl", c.tmp / "b.jsonl")
    return ["data", "validate", c.tmp / "a.jsonl"]


@case("validate: manifest does not exist", 2, "", check=lambda c, o: "does not exist" in o.out)
def _(c: Ctx) -> list[Any]:
    return ["data", "validate", c.tmp / "nope.jsonl"]


@case("validate: 0-byte clip", 2, "", check=lambda c, o: ":1: " in o.out and "is empty (0 bytes)" in o.out)
def _(c: Ctx) -> list[Any]:
    return ["data", "validate", c.manifest("zero.jsonl", [c.good_line(audio=str(c.corpus / "empty.wav"))])]


@case(
    "validate: audio path is a directory",
    2,
    "",
    check=lambda c, o: "is a directory, not an audio file" in o.out,
)
def _(c: Ctx) -> list[Any]:
    return ["data", "validate", c.manifest("dir.jsonl", [c.good_line(audio=str(c.tmp))])]


@case("validate: a 90 s clip is accepted with a note (windows, as in train and eval)", 0,
      check=lambda c, o: "encoded in 30 s windows" in o.err)  # fmt: skip
def _(c: Ctx) -> list[Any]:
    t = np.arange(16000 * 90) / 16000
    sf.write(c.tmp / "long.wav", (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000)
    return ["data", "validate", c.manifest("ninety.jsonl", [c.good_line(audio=str(c.tmp / "long.wav"))])]


# ------------------------------------------------------------------------------------------ train: data
@case("train: 0-byte clip in train, on_bad_line=fail stops before step 1 naming the line", 2,
      r"train0\.jsonl:10: .*empty\.wav: is empty \(0 bytes\).*data\.on_bad_line=skip",
      check=lambda c, o: not (c.tmp / "out").exists())  # fmt: skip
def _(c: Ctx) -> list[Any]:
    lines = (c.corpus / "train.jsonl").read_text().splitlines()
    bad = c.manifest("train0.jsonl", [*lines, c.good_line("zero", audio=str(c.corpus / "empty.wav"))])
    return train_argv(c.corpus, c.tmp / "out", f"data.train=[{bad}]")


@case("train: 0-byte clip in dev, on_bad_line=fail stops before step 1 naming the line", 2,
      r"dev0\.jsonl:4: .*is empty \(0 bytes\)", check=lambda c, o: not (c.tmp / "out").exists())  # fmt: skip
def _(c: Ctx) -> list[Any]:
    lines = (c.corpus / "dev.jsonl").read_text().splitlines()
    bad = c.manifest("dev0.jsonl", [*lines, c.good_line("zero", audio=str(c.corpus / "empty.wav"))])
    return train_argv(c.corpus, c.tmp / "out", f"data.dev=[{bad}]")


def _skipped_and_saved(c: Ctx, o: Outcome) -> bool:
    out = c.tmp / "out"
    summary = json.loads((out / "summary.json").read_text())
    return (
        summary["skipped"]["train_clips"] == 1
        and summary["skipped"]["dev_clips"] == 1
        and summary["steps"] == 4
        and (out / "model" / "model.safetensors").is_file()
        and checkpoints(out)[-1] == 4
        and "skipped 1 of 10 clips" in o.err
        and "skipped 1 of 4 clips" in o.err
    )


@case("train: 0-byte clip in train and dev, on_bad_line=skip trains to the end, saves, counts", 0,
      check=_skipped_and_saved)  # fmt: skip
def _(c: Ctx) -> list[Any]:
    train = (c.corpus / "train.jsonl").read_text().splitlines()
    dev = (c.corpus / "dev.jsonl").read_text().splitlines()
    zero = c.good_line("zero", audio=str(c.corpus / "empty.wav"))
    return train_argv(c.corpus, c.tmp / "out", f"data.train=[{c.manifest('t.jsonl', [*train, zero])}]",
                      f"data.dev=[{c.manifest('d.jsonl', [*dev, zero])}]", "data.on_bad_line=skip")  # fmt: skip


@case(
    "train: a 20 000-character answer is refused at load time",
    2,
    r"t\.jsonl:10: 'answer' has 21000 characters",
)
def _(c: Ctx) -> list[Any]:
    train = (c.corpus / "train.jsonl").read_text().splitlines()
    bad = c.manifest("t.jsonl", [*train, c.good_line("long", answer="la " * 7000)])
    return train_argv(c.corpus, c.tmp / "out", f"data.train=[{bad}]")


@case("train: bad override names the key", 2, r"optim\.lrr.*did you mean 'lr'")
def _(c: Ctx) -> list[Any]:
    return train_argv(c.corpus, c.tmp / "out", "optim.lrr=1")


@case("train: invalid YAML config", 2, r"bad\.yaml: not valid YAML")
def _(c: Ctx) -> list[Any]:
    (c.tmp / "bad.yaml").write_text("steps: [1\n")
    return ["train", "--config", c.tmp / "bad.yaml"]


# ------------------------------------------------------------------------------------------ train: resume
@case("resume: changed adapter type is refused with the diff", 2,
      r"written for another model \(.*model\.adapter\.type: 'moe' -> 'linear'")  # fmt: skip
def _(c: Ctx) -> list[Any]:
    return c.resume("model.adapter={type: linear}")


@case("resume: model.adapter.type=mlp is refused with the diff before the model is built", 2,
      r"written for another model \(model\.adapter\.type: 'moe' -> 'mlp'\)")  # fmt: skip
def _(c: Ctx) -> list[Any]:
    return c.resume("model.adapter.type=mlp")


@case("resume: num_experts 4 -> 8 is refused with the diff (not a size-mismatch traceback)", 2,
      r"model\.adapter\.num_experts: 4 -> 8")  # fmt: skip
def _(c: Ctx) -> list[Any]:
    return c.resume("model.adapter.num_experts=8")


@case("resume: changed optim.lr is refused with the diff and the flag that accepts it", 2,
      r"optim\.lr: 0\.003 -> 0\.01, steps: 4 -> 6; .*--allow-config-change optim\.lr steps")  # fmt: skip
def _(c: Ctx) -> list[Any]:
    return c.resume("optim.lr=0.01", "steps=6")


@case("resume: changed seed / batch size / train manifest are refused", 2,
      r"data\.batch_size: 4 -> 2.*data\.train\[0\].*seed: 0 -> 1")  # fmt: skip
def _(c: Ctx) -> list[Any]:
    other = c.manifest("other.jsonl", (c.corpus / "train.jsonl").read_text().splitlines()[:6])
    return c.resume("seed=1", "data.batch_size=2", f"data.train=[{other}]")


def _new_lr_used(c: Ctx, o: Outcome) -> bool:
    rows = [json.loads(line) for line in (c.run / "metrics.jsonl").read_text().splitlines()]
    change = [r for r in rows if r.get("split") == "config_change"]
    after = [r for r in rows if "loss" in r and r["step"] > 4]
    # warmup over (2) is done: the cosine factor times the NEW base LR, not the old one
    return (
        change
        == [{"step": 4, "split": "config_change", "changed": {"optim.lr": [0.003, 0.01], "steps": [4, 6]}}]
        and [r["step"] for r in after] == [5, 6]
        and after[0]["lr"] > 0.003
    )


@case("resume: --allow-config-change optim.lr applies the new LR and records it in metrics.jsonl", 0,
      check=_new_lr_used)  # fmt: skip
def _(c: Ctx) -> list[Any]:
    return [*c.resume("optim.lr=0.01", "steps=6"), "--allow-config-change", "optim.lr", "steps"]


@case("resume: --allow-config-change cannot make a model change safe", 2, r"written for another model")
def _(c: Ctx) -> list[Any]:
    return [*c.resume("model.adapter.num_experts=8"), "--allow-config-change", "model"]


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _fell_back(skipped: str) -> Callable[[Ctx, Outcome], bool]:
    def check(c: Ctx, o: Outcome) -> bool:
        return (
            f"skipped step_0000004: {c.run}" in o.err
            and skipped in o.err
            and f"resumed from {c.run / 'checkpoints' / 'step_0000002'} (step 2)" in o.out
            and [r["step"] for r in train_rows(c.run)] == [1, 2, 3, 4]
            and (c.run / "checkpoints" / ".damaged-step_0000004").is_dir()
        )

    return check


@case("resume: truncated model.safetensors in the latest checkpoint falls back to the previous one", 0,
      check=_fell_back("model.safetensors is truncated"))  # fmt: skip
def _(c: Ctx) -> list[Any]:
    _truncate(c.run / "checkpoints" / "step_0000004" / "model.safetensors")
    return c.resume()


@case("resume: truncated trainer.pt falls back", 0, check=_fell_back("trainer.pt is truncated"))
def _(c: Ctx) -> list[Any]:
    _truncate(c.run / "checkpoints" / "step_0000004" / "trainer.pt")
    return c.resume()


@case(
    "resume: a byte flipped in rng_rank0.pt (same size) falls back",
    0,
    check=_fell_back("does not match its sha256"),
)
def _(c: Ctx) -> list[Any]:
    path = c.run / "checkpoints" / "step_0000004" / "rng_rank0.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return c.resume()


@case("resume: corrupt checkpoint.json falls back", 0, check=_fell_back("checkpoint.json is corrupt"))
def _(c: Ctx) -> list[Any]:
    (c.run / "checkpoints" / "step_0000004" / "checkpoint.json").write_text('{"files": {"model')
    return c.resume()


@case("resume: a NaN weight (manifest re-signed) falls back", 0, check=_fell_back("non-finite weights"))
def _(c: Ctx) -> list[Any]:
    step = c.run / "checkpoints" / "step_0000004"
    tensors = load_file(step / "model.safetensors")
    name = next(iter(tensors))
    tensors[name].view(-1)[0] = float("nan")
    save_file(tensors, step / "model.safetensors")
    ckpt.write_manifest(step, ckpt.read_manifest(step)["fingerprint"])
    return c.resume()


@case("resume: every checkpoint damaged is an error, not a fresh start", 2, r"no checkpoint in .* verifies")
def _(c: Ctx) -> list[Any]:
    for step in checkpoints(c.run):
        _truncate(c.run / "checkpoints" / ckpt.step_dir_name(step) / "trainer.pt")
    return c.resume()


@case("resume: torn last line of metrics.jsonl is dropped with a warning", 0,
      check=lambda c, o: "torn last line dropped" in o.err and [r["step"] for r in train_rows(c.run)] == [1, 2, 3, 4])  # fmt: skip
def _(c: Ctx) -> list[Any]:
    shutil.rmtree(c.run / "checkpoints" / "step_0000004")
    with open(c.run / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 5, "loss": 1.2, "aux')
    return c.resume()


@case("resume: stale .tmp and empty step directories are removed at start", 0,
      check=lambda c, o: not (c.run / "checkpoints" / ".tmp-step_0000006").exists()
      and not (c.run / "checkpoints" / "step_0000008").exists())  # fmt: skip
def _(c: Ctx) -> list[Any]:
    (c.run / "checkpoints" / ".tmp-step_0000006").mkdir()
    (c.run / "checkpoints" / ".tmp-step_0000006" / "model.safetensors").write_bytes(b"x" * 1000)
    (c.run / "checkpoints" / "step_0000008").mkdir()
    return c.resume()


def _snapshot(run: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for p in run.rglob("*") if p.is_file()}


@case("resume: a finished run writes nothing", 0,
      check=lambda c, o: _snapshot(c.run) == c.notes["before"] and "already finished" in o.out)  # fmt: skip
def _(c: Ctx) -> list[Any]:
    c.notes["before"] = _snapshot(c.run)
    return c.resume()


# ------------------------------------------------------------------------------------------ train: NaN, storage
@case("train: optim.lr=1e6 stops with a clear message; no NaN model, no summary", 2,
      r"training stopped: non-finite values 5 step\(s\) in a row",
      check=lambda c, o: not (c.tmp / "out" / "model").exists()
      and not (c.tmp / "out" / "summary.json").exists())  # fmt: skip
def _(c: Ctx) -> list[Any]:
    return train_argv(
        c.corpus, c.tmp / "out", "optim.lr=1e6", "schedule.warmup_steps=0", "steps=12", "data.dev=[]"
    )


def _disk_full_on_second_save(c: Ctx) -> list[Any]:
    real = ckpt.save_tensors
    calls = {"n": 0}

    def fill_disk(tensors: dict, path: Path) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            path.write_bytes(b"half a safetensors file")
            raise OSError(errno.ENOSPC, "No space left on device")
        real(tensors, path)

    c.monkeypatch.setattr(ckpt, "save_tensors", fill_disk)
    return train_argv(c.corpus, c.tmp / "out", "data.dev=[]")


@case("train: disk full during a checkpoint: exit 3, path and free space, temp removed, previous intact", 3,
      r"cannot write the step-4 checkpoint to .*\.tmp-step_0000004: No space left on device \(\d+\.\d MiB free\)",
      check=lambda c, o: checkpoints(c.tmp / "out") == [2] and no_temp_dirs(c.tmp / "out")
      and ckpt.verify_checkpoint(c.tmp / "out" / "checkpoints" / "step_0000002") is not None)  # fmt: skip
def _(c: Ctx) -> list[Any]:
    return _disk_full_on_second_save(c)


@case(
    "train: read-only output folder: exit 3 with the path",
    3,
    r"cannot write the run's logs to .*Read-only file system",
)
def _(c: Ctx) -> list[Any]:
    import audiomoe.training.trainer as trainer

    def read_only(obj: Any, path: Path) -> None:
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    c.monkeypatch.setattr(trainer, "save_yaml", read_only)
    return train_argv(c.corpus, c.tmp / "out", "data.dev=[]")


# ------------------------------------------------------------------------------------------ eval / infer
def _eval(c: Ctx, *extra: Any) -> list[Any]:
    return [
        "eval",
        "--checkpoint",
        c.run,
        "--manifest",
        c.corpus / "dev.jsonl",
        "--max-new-tokens",
        "2",
        *extra,
    ]


@case("eval: --batch-size 0", 2, r"--batch-size: must be >= 1, got 0")
def _(c: Ctx) -> list[Any]:
    return _eval(c, "--batch-size", "0")


@case("eval: --batch-size -3", 2, r"--batch-size: must be >= 1, got -3")
def _(c: Ctx) -> list[Any]:
    return _eval(c, "--batch-size", "-3")


@case("eval: --limit -1", 2, r"--limit: must be >= 0, got -1")
def _(c: Ctx) -> list[Any]:
    return _eval(c, "--limit", "-1")


@case("eval: non-UTF-8 manifest names the file and line", 2, r"latin\.jsonl:2: not UTF-8")
def _(c: Ctx) -> list[Any]:
    bad = c.manifest("latin.jsonl", (c.good_line() + "\n").encode() + b'{"key": "\xe9"}\n')
    return ["eval", "--checkpoint", c.run, "--manifest", bad]


def _mcq(c: Ctx, items: Any) -> list[Any]:
    path = c.tmp / "mcq.json"
    path.write_text(json.dumps(items))
    return ["eval", "--checkpoint", c.run, "--mcq", path, "--max-new-tokens", "2"]


MCQ_OK = {"question": "What is it?", "choices": ["speech", "music"], "answer": "music", "audio_path": "x.wav"}


@case("eval: MCQ choices given as one string", 2, r"item 0: 'choices' must be a list of strings")
def _(c: Ctx) -> list[Any]:
    return _mcq(c, [{**MCQ_OK, "choices": "speech"}])


@case("eval: MCQ item that is a string", 2, r"item 1: expected an object")
def _(c: Ctx) -> list[Any]:
    return _mcq(c, [MCQ_OK, "what is it?"])


@case("eval: MCQ int choices", 2, r"item 0: 'choices' must be a list")
def _(c: Ctx) -> list[Any]:
    return _mcq(c, [{**MCQ_OK, "choices": 3}])


@case("eval: MCQ with 27 choices", 2, r"item 0: 27 choices; an item needs 2 to 26")
def _(c: Ctx) -> list[Any]:
    return _mcq(c, [{**MCQ_OK, "choices": [f"c{i}" for i in range(27)], "answer": "c0"}])


@case("eval: corrupt checkpoint.json of the model", 2, r"model/checkpoint\.json is corrupt")
def _(c: Ctx) -> list[Any]:
    (c.run / "model" / "checkpoint.json").write_text('{"format_version": ')
    return _eval(c)


@case("eval: corrupt tokenizer.json of the model", 2, r"model/tokenizer\.json is corrupt")
def _(c: Ctx) -> list[Any]:
    (c.run / "model" / "tokenizer.json").write_text('{"version": "1.0", "trunc')
    return _eval(c)


@case("eval: truncated model.safetensors of the model", 2, r"model/model\.safetensors is damaged")
def _(c: Ctx) -> list[Any]:
    _truncate(c.run / "model" / "model.safetensors")
    return _eval(c)


@case("infer: a model with a NaN weight is refused", 2, r"holds NaN/inf weights")
def _(c: Ctx) -> list[Any]:
    path = c.run / "model" / "model.safetensors"
    tensors = load_file(path)
    name = next(n for n, t in tensors.items() if t.is_floating_point())
    tensors[name].view(-1)[0] = float("nan")
    save_file(tensors, path, metadata={"format": "pt"})
    return ["infer", "--checkpoint", c.run / "model", "--audio", c.corpus / "clip0.wav"]


@case("infer: --max-new-tokens 0", 2, r"--max-new-tokens: must be >= 1")
def _(c: Ctx) -> list[Any]:
    return [
        "infer",
        "--checkpoint",
        c.run / "model",
        "--audio",
        c.corpus / "clip0.wav",
        "--max-new-tokens",
        "0",
    ]


@case("infer: a 0-byte clip", 2, r"empty\.wav: is empty \(0 bytes\)")
def _(c: Ctx) -> list[Any]:
    return ["infer", "--checkpoint", c.run / "model", "--audio", c.corpus / "empty.wav"]


@case("infer: the clip is a directory", 2, r"audio file not found|is a directory")
def _(c: Ctx) -> list[Any]:
    return ["infer", "--checkpoint", c.run / "model", "--audio", c.tmp]


@pytest.mark.parametrize("fault", CASES, ids=[c.name for c in CASES])
def test_fault_case(fault: Case, corpus: Path, run_copy: Path, tmp_path: Path, monkeypatch, run_cli) -> None:
    torch.manual_seed(0)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    ctx = Ctx(corpus, run_copy, scratch, monkeypatch)
    outcome = run_cli(fault.setup(ctx))
    monkeypatch.undo()  # patched writers end with the command
    check_ok = fault.check(ctx, outcome) if fault.check else True
    kind = classify(outcome, fault.code, fault.pattern, check_ok)
    record(kind)
    assert kind == ("ok" if fault.code == 0 else "clear error"), (
        f"{fault.name}: {kind}, exit {outcome.code}\n--- stdout\n{outcome.out[-3000:]}\n--- stderr\n{outcome.err[-3000:]}"
    )
