"""The error contract of ``audiomoe``: exit 2 bad input, 3 environment, 1 a bug (traceback + how to report)."""

from __future__ import annotations

import errno

import pytest
from conftest import TALLY

from audiomoe.cli.main import exit_code, main
from audiomoe.config import ConfigError
from audiomoe.data.manifest import ManifestError
from audiomoe.training.checkpoint import StorageError


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ConfigError("optim.lr must be > 0"), 2),
        (ManifestError("m.jsonl:3: bad"), 2),
        (FileNotFoundError("manifest m.jsonl does not exist"), 2),
        (IsADirectoryError("manifest m is a directory"), 2),
        (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), 2),
        (StorageError(errno.ENOSPC, "cannot write ... No space left on device"), 3),
        (PermissionError(errno.EACCES, "Permission denied"), 3),
        (OSError(errno.EROFS, "Read-only file system"), 3),
        (RuntimeError("boom"), 1),
        (KeyError("x"), 1),
    ],
)
def test_exit_code_of_each_kind_of_error(error: BaseException, code: int) -> None:
    assert exit_code(error) == code


def test_a_bug_prints_its_traceback_and_asks_for_a_report(monkeypatch, capsys) -> None:
    import audiomoe.training.run as run

    def broken(*args, **kwargs):
        raise RuntimeError("an internal invariant broke")

    monkeypatch.setattr(run, "train", broken)
    assert main(["train", "--config", "demo-quick"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "an internal invariant broke" in err
    assert err.strip().splitlines()[-1].endswith("and the output of `audiomoe env`")
    TALLY["cases"] += 1
    TALLY["ok"] += 1
