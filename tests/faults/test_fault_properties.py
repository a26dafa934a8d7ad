"""Property tests: arbitrary text never produces anything but a clean error or a valid record / config.

- A manifest line (``parse_line``): an :class:`AudioRecord` whose fields have the promised types, or a
  :class:`ManifestError`; also for JSON objects built from the schemas' own keys with arbitrary values.
- A manifest file of arbitrary bytes (``load_manifest``): a :class:`ManifestLoad` or a ``ManifestError``.
- A config override (``load_train_config(None, [text])``): a :class:`TrainConfig` or a ``ConfigError``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from conftest import TALLY
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audiomoe.config import ConfigError
from audiomoe.data.manifest import AudioRecord, ManifestError, load_manifest, parse_line
from audiomoe.training.config import TrainConfig, load_train_config

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KEYS = ["key", "audio", "task", "instruction", "answer", "attributes", "duration", "transcript", "source",
        "target", "prompt", "messages", "audios", "id", "role", "content"]  # fmt: skip
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
    | st.sampled_from(["transcribe", "instrument", "<audio>What?", "user", "assistant", "a.wav"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=4),
    max_leaves=12,
)  # fmt: skip
CONFIG_KEYS = ["steps", "seed", "optim.lr", "optim.betas", "data.batch_size", "data.train", "model.adapter",
               "model.adapter.type", "nan_policy", "precision", "schedule.warmup_steps", "optim", "data", "x.y"]  # fmt: skip


def assert_record(record: AudioRecord) -> None:
    assert isinstance(record, AudioRecord)
    for name in ("key", "audio", "task", "instruction", "answer"):
        assert isinstance(getattr(record, name), str)
    assert record.key.strip() and record.audio and record.answer.strip()
    assert record.duration is None or (isinstance(record.duration, float) and record.duration > 0)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in record.attributes.items())


def parse_or_error(text: str) -> None:
    try:
        record = parse_line(text, 1)
    except ManifestError as err:
        assert str(err) and "\n" not in str(err)
    else:
        assert_record(record)
    TALLY["properties"] += 1


@SETTINGS
@given(st.text(max_size=200))
def test_any_text_line_is_a_record_or_a_clean_error(text: str) -> None:
    parse_or_error(text)


@SETTINGS
@given(st.dictionaries(st.sampled_from(KEYS), JSON_VALUES, max_size=8))
def test_any_object_of_schema_keys_is_a_record_or_a_clean_error(obj: dict) -> None:
    parse_or_error(json.dumps(obj))


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=300))
def test_any_manifest_bytes_load_or_fail_cleanly(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.jsonl"
        path.write_bytes(data)
        try:
            loaded = load_manifest(path, on_error="skip", check_files=False)
        except ManifestError as err:
            assert str(err).startswith(str(path)) and "\n" not in str(err)
        else:
            assert all(str(p).startswith(f"{path}:") for p in loaded.problems)
            for record in loaded.records:
                assert_record(record)
    TALLY["properties"] += 1


def config_or_error(overrides: list[str]) -> None:
    try:
        config = load_train_config(None, overrides)
    except ConfigError as err:
        assert str(err)
    else:
        assert isinstance(config, TrainConfig) and config.steps >= 1 and config.optim.lr > 0
    TALLY["properties"] += 1


@SETTINGS
@given(st.text(max_size=60))
def test_any_override_text_is_a_config_or_a_clean_error(text: str) -> None:
    config_or_error([text])


@SETTINGS
@given(st.sampled_from(CONFIG_KEYS), st.text(max_size=30) | JSON_VALUES.map(json.dumps))
def test_any_value_for_a_known_key_is_a_config_or_a_clean_error(key: str, value: str) -> None:
    config_or_error([f"{key}={value}"])
