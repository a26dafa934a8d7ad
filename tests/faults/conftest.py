"""Fault suite fixtures: a tiny tone corpus, one trained tiny run to tamper with, an in-process CLI runner that
classifies every outcome, and the tally printed at the end of the session.

Every case ends in one of: ``clear error`` (the expected exit code and a one-line message matching the case's
pattern), ``ok`` (exit 0 and the case's check of the result holds), ``traceback`` (any traceback, or an exception
escaping ``main``) or ``silent wrong`` (exit 0 where an error was due, or a result that fails its check), or
``wrong error`` (another exit code or message). The suite asserts tracebacks = silent wrong = wrong error = 0.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audiomoe.cli.main import main as cli

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the toy model of test_train

TALLY: Counter[str] = Counter()
NOTES = {"piano": 220.0, "flute": 660.0, "organ": 330.0}
TRACEBACK = "Traceback (most recent call last)"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not TALLY:
        return
    terminalreporter.write_sep("-", "fault suite")
    terminalreporter.write_line(
        f"fault suite: {TALLY['cases']} cases: {TALLY['clear error']} clear errors, {TALLY['ok']} ok, "
        f"{TALLY['kills']} kills resumed with identical losses, {TALLY['properties']} property examples; "
        f"tracebacks = {TALLY['traceback']}, silent wrong = {TALLY['silent wrong']}, "
        f"wrong error = {TALLY['wrong error']}"
    )


@dataclass
class Outcome:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]):
    """``run_cli(argv) -> Outcome``: ``audiomoe`` in this process (an escaping exception becomes exit 1 with
    its traceback in ``err``, so it is counted, not lost)."""

    def run(argv: list[str]) -> Outcome:
        capsys.readouterr()
        try:
            code = cli([str(a) for a in argv])
        except SystemExit as exc:  # argparse
            code = exc.code if isinstance(exc.code, int) else 2
        except BaseException:  # noqa: BLE001 - a fault case must never crash the suite
            captured = capsys.readouterr()
            return Outcome(1, captured.out, captured.err + traceback.format_exc())
        captured = capsys.readouterr()
        return Outcome(code, captured.out, captured.err)

    return run


def classify(outcome: Outcome, code: int, pattern: str, check_ok: bool = True) -> str:
    """The tally class of ``outcome`` for a case expecting exit ``code`` and (for errors) ``pattern``."""
    if TRACEBACK in outcome.text:
        return "traceback"
    if code == 0:
        return "ok" if outcome.code == 0 and check_ok else "silent wrong"
    if outcome.code == 0:
        return "silent wrong"
    if not pattern:  # `data validate`: one `path:line: reason` line per problem, judged by the case's check
        return "clear error" if outcome.code == code and check_ok else "wrong error"
    errors = [line for line in outcome.err.splitlines() if re.match(r"^(audiomoe|usage).*error", line)]
    one_line = len(errors) == 1
    if outcome.code == code and one_line and re.search(pattern, errors[0]) and check_ok:
        return "clear error"
    return "wrong error"


def record(kind: str) -> None:
    TALLY["cases"] += 1
    TALLY[kind] += 1


@pytest.fixture(autouse=True, scope="session")
def _preflight_cache(tmp_path_factory: pytest.TempPathFactory):
    """The preflight pass caches decoded clips by content hash: keep this suite's cache out of ~/.cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("AUDIOMOE_PREFLIGHT_CACHE", str(tmp_path_factory.mktemp("preflight") / "cache.json"))
    yield
    mp.undo()


def tone_line(i: int, root: Path) -> str:
    label = list(NOTES)[i % 3]
    seconds = 0.5 + 0.1 * (i % 6)
    t = np.arange(int(16000 * seconds)) / 16000
    wave = 0.3 * np.sin(2 * np.pi * NOTES[label] * t) + 0.01 * np.random.default_rng(i).standard_normal(
        t.size
    )
    sf.write(root / f"clip{i}.wav", wave.astype(np.float32), 16000)
    # absolute paths: cases copy these lines into manifests of their own elsewhere
    return json.dumps({"key": f"k{i}", "audio": str(root / f"clip{i}.wav"), "task": "instrument",
                       "instruction": "Which instrument is playing?", "answer": label,
                       "attributes": {"category": "music"}, "duration": seconds})  # fmt: skip


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """9 train + 3 dev tone clips, a 0-byte clip, and ``base.yaml``: the tiny MoE LALM, 4 steps, checkpoints
    every 2."""
    root = tmp_path_factory.mktemp("fault-corpus")
    lines = [tone_line(i, root) for i in range(12)]
    (root / "train.jsonl").write_text("\n".join(lines[:9]) + "\n")
    (root / "dev.jsonl").write_text("\n".join(lines[9:]) + "\n")
    (root / "empty.wav").write_bytes(b"")
    (root / "base.yaml").write_text(
        "model:\n  preset: tiny\n  adapter: {type: moe, num_experts: 4, top_k: 2}\n"
        f"data:\n  train: [{root / 'train.jsonl'}]\n  dev: [{root / 'dev.jsonl'}]\n  batch_size: 4\n"
        "  max_dev_items: 2\n  eval_batch_size: 2\n"
        "steps: 4\ncheckpoint_every: 2\nkeep_last: 3\nprogress: false\ntensorboard: false\n"
        "optim:\n  lr: 3.0e-3\nschedule:\n  warmup_steps: 2\n"
    )
    return root


def train_argv(corpus: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--config", str(corpus / "base.yaml"), f"out_dir={out}", *extra]


@pytest.fixture(scope="session")
def trained(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 4-step run (checkpoints at steps 2 and 4, model/); copy it before changing it."""
    run = tmp_path_factory.mktemp("fault-run") / "run"
    assert cli(train_argv(corpus, run)) == 0
    return run


@pytest.fixture
def run_copy(trained: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


def train_rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
