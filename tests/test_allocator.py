"""Huge pages for torch's CPU allocator: the kernel mode is read right, the CLI turns them on before any tensor
exists, a user's own setting wins, and torch really takes far fewer page faults for a large tensor with them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from audiomoe.allocator import HUGE_PAGES_ENV, configure_cpu_allocator, kernel_huge_pages

# A 32 MiB tensor filled once, in a fresh interpreter: its page faults (RUSAGE_SELF minor faults)
FAULTS_OF_A_LARGE_TENSOR = """
import resource, sys
{setup}
import torch
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
torch.empty(8 * 2**20).fill_(1.0)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _mode_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "enabled"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "mode"),
    [
        ("always [madvise] never\n", "madvise"),
        ("[always] madvise never\n", "always"),
        ("always madvise [never]", "never"),
    ],
)
def test_the_kernel_mode_is_the_bracketed_word(tmp_path: Path, text: str, mode: str) -> None:
    assert kernel_huge_pages(_mode_file(tmp_path, text)) == mode


def test_no_mode_file_or_no_bracket_means_no_huge_pages(tmp_path: Path) -> None:
    assert kernel_huge_pages(tmp_path / "missing") is None
    assert kernel_huge_pages(_mode_file(tmp_path, "always madvise never")) is None


def test_on_where_the_kernel_grants_them_off_where_it_never_does(tmp_path: Path) -> None:
    for text, expected in (("always [madvise] never", True), ("[always] madvise never", True)):
        environ: dict[str, str] = {}
        assert configure_cpu_allocator(environ, _mode_file(tmp_path, text)) is expected
        assert environ == {HUGE_PAGES_ENV: "1"}
    environ = {}
    assert configure_cpu_allocator(environ, _mode_file(tmp_path, "always madvise [never]")) is False
    assert environ == {}  # nothing set: torch's default stays
    assert configure_cpu_allocator(environ, tmp_path / "missing") is False and environ == {}


def test_a_users_own_setting_wins(tmp_path: Path) -> None:
    madvise = _mode_file(tmp_path, "always [madvise] never")
    environ = {HUGE_PAGES_ENV: "0"}
    assert configure_cpu_allocator(environ, madvise) is False and environ == {HUGE_PAGES_ENV: "0"}
    environ = {HUGE_PAGES_ENV: "1"}
    assert configure_cpu_allocator(environ, _mode_file(tmp_path, "[never]")) is True


def test_the_cli_turns_them_on_for_every_command(tmp_path: Path) -> None:
    """``audiomoe env`` in a fresh interpreter reports what ``main()`` set before the command ran."""
    out = tmp_path / "env.json"
    child = {k: v for k, v in os.environ.items() if k != HUGE_PAGES_ENV}
    child["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
    child["AUDIOMOE_BF16_NATIVE"] = "0"  # no probe: this test is about the allocator
    subprocess.run(
        [sys.executable, "-m", "audiomoe.cli.main", "env", "--json", str(out)],
        check=True,
        env=child,
        capture_output=True,
        timeout=120,
    )
    pages = json.loads(out.read_text())["huge_pages"]
    assert pages["kernel"] == kernel_huge_pages()
    assert pages[HUGE_PAGES_ENV] == ("1" if kernel_huge_pages() in ("madvise", "always") else None)


def _faults(setup: str, **env: str) -> int:
    child = {k: v for k, v in os.environ.items() if k != HUGE_PAGES_ENV}
    result = subprocess.run(
        [sys.executable, "-c", FAULTS_OF_A_LARGE_TENSOR.format(setup=setup)],
        check=True,
        env={**child, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    return int(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(kernel_huge_pages() != "madvise", reason="needs the kernel's THP mode `madvise`")
def test_torch_takes_far_fewer_page_faults_for_a_large_tensor_with_them() -> None:
    """The knob is torch's, read at its first CPU allocation: this guards that it still works with the pinned torch
    and that :func:`configure_cpu_allocator` before ``import torch`` is early enough. 32 MiB in 4 KiB pages is
    8192 faults; in 2 MiB pages about 16 (a few hundred measured, the interpreter's own included)."""
    plain = _faults("", **{HUGE_PAGES_ENV: "0"})
    huge = _faults("from audiomoe.allocator import configure_cpu_allocator; configure_cpu_allocator()")
    assert plain > 8000
    assert huge < plain / 4
