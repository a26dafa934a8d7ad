"""argparse value types shared by the commands: a bad option value is argparse's one-line usage error (exit 2),
never a wrong result later (``--batch-size -3`` generating nothing, ``--limit -1`` dropping an item)."""

from __future__ import annotations

import argparse
import math


def _number(kind: type, minimum: float, text: str) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
        ) from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be >= {minimum:g}, got {text}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (``--batch-size``, ``--max-new-tokens``)."""
    return int(_number(int, 1, text))


def non_negative_int(text: str) -> int:
    """An integer >= 0 (``--limit``, where 0 means all)."""
    return int(_number(int, 0, text))


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (``--temperature``, ``--max-duration``)."""
    return float(_number(float, 0.0, text))
