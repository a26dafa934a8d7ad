"""``audiomoe compare``: intervals, paired differences and verdicts for arms (adapters) over several seeds.

    audiomoe compare runs/ --reference moe --json compare.json --markdown compare.md --plot forest.png
    audiomoe compare moe-s0.json moe-s1.json linear-s0.json linear-s1.json --label moe moe linear linear

Inputs are eval reports (``audiomoe eval --json``, manifest evaluations) or directories searched recursively for
``eval.json``. Arm and seed of a report, first rule that applies:
  1. arm: ``--label ARM``, one per input in order (every report found under that input gets that arm);
  2. the report's own ``arm`` / ``seed`` keys;
  3. the path: ``.../ARM/seed-N/<file>.json`` gives arm ARM, seed N; otherwise ``.../ARM/<file>.json`` gives arm
     ARM (the report's parent directory) and the next free seed number of that arm (0, 1, ... in input order).
Every arm and seed must be scored on the same items. Intervals: a paired bootstrap over test items (within
each task) and seeds; the printed method says exactly what was done.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

SEED_DIR = re.compile(r"^seed[-_]?(\d+)$")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="compare arms over seeds: bootstrap intervals, paired differences, p-values, forest plot",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", metavar="RUN_DIR_OR_JSON", help="eval.json files or directories")
    parser.add_argument("--reference", default="moe", help="the arm compared with every other (default moe)")
    parser.add_argument("--label", nargs="+", metavar="ARM", help="arm of each input, in order (see rule 1)")
    parser.add_argument("--json", help="write the full comparison here")
    parser.add_argument("--markdown", help="write the tables here (they are printed either way)")
    parser.add_argument("--plot", help="write the forest plot here (PNG)")
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap draws (default 0)")
    parser.set_defaults(func=run)


def find_reports(path: Path) -> list[Path]:
    """``path`` itself if a file, else every ``eval.json`` below it (sorted)."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or directory; give eval.json files or run directories")
    found = sorted(path.rglob("eval.json"))
    if not found:
        raise FileNotFoundError(
            f"{path}: no eval.json below it; lay runs out as ARM/seed-N/eval.json "
            "(audiomoe eval --json ARM/seed-N/eval.json) or pass the report files"
        )
    return found


def arm_and_seed(path: Path, report: dict[str, Any], label: str | None) -> tuple[str, Any]:
    """The (arm, seed) of a report by the rules in the module docstring; seed None: not given."""
    parts = path.resolve().parent.parts
    match = SEED_DIR.match(parts[-1]) if parts else None
    arm = parts[-2] if match and len(parts) > 1 else parts[-1] if parts else ""
    return str(label or report.get("arm", arm)), report.get("seed", int(match.group(1)) if match else None)


def load_report(path: Path) -> dict[str, Any]:
    """A manifest eval report, with one clear error when the file is not one."""
    try:
        report = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path}: not JSON (line {err.lineno}: {err.msg}); give reports written by audiomoe eval --json"
        ) from None
    if not isinstance(report, dict):
        raise ValueError(f"{path}: a JSON {type(report).__name__}, not an eval report (a JSON object)")
    if "items" not in report and "predictions" not in report:
        raise ValueError(
            f"{path}: no 'items' or 'predictions'; re-run audiomoe eval --manifest ... --json on this checkpoint"
        )
    if "mcq" in report:
        raise ValueError(f"{path}: a multiple-choice (--mcq) report; compare takes manifest evaluations")
    return report


def collect(inputs: list[str], labels: list[str] | None) -> dict[str, list[dict[str, Any]]]:
    """``{arm: [report, ...]}`` from the inputs, each report tagged with ``arm``, ``seed`` and ``source``."""
    if labels and len(labels) != len(inputs):
        raise ValueError(f"--label gives {len(labels)} arms for {len(inputs)} inputs; give one per input")
    arms: dict[str, list[dict[str, Any]]] = {}
    seen: dict[tuple[str, str], Path] = {}
    for k, given in enumerate(inputs):
        for path in find_reports(Path(given)):
            report = load_report(path)
            arm, seed = arm_and_seed(path, report, labels[k] if labels else None)
            if seed is None:
                seed = next(n for n in range(len(seen) + 1) if (arm, str(n)) not in seen)
            if (arm, str(seed)) in seen:
                raise ValueError(
                    f"{path}: arm {arm!r} seed {seed} again (also {seen[arm, str(seed)]}); give each run its own "
                    "ARM/seed-N directory or set 'arm' / 'seed' in the reports"
                )
            seen[arm, str(seed)] = path
            arms.setdefault(arm, []).append(report | {"arm": arm, "seed": seed, "source": str(path)})
    return arms


def run(args: argparse.Namespace) -> int:
    from audiomoe.evaluation.forest import forest_plot
    from audiomoe.evaluation.stats import compare, comparison_markdown

    arms = collect(args.inputs, args.label)
    if args.reference not in arms:
        raise ValueError(
            f"reference arm {args.reference!r} not found; arms found: {', '.join(sorted(arms))}; "
            "pass --reference with one of them"
        )
    result = compare(arms, reference=args.reference, resamples=args.resamples, seed=args.seed)
    result["sources"] = {a: {str(r["seed"]): r["source"] for r in reports} for a, reports in arms.items()}
    markdown = "\n".join(comparison_markdown(result)) + "\n"
    print(markdown)
    if args.markdown:
        Path(args.markdown).write_text(markdown)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}")
    if args.plot:
        print(f"wrote {forest_plot(result, args.plot)}")
    return 0
