"""AudioLanguageProcessor: chat template, placeholder expansion, labels, padding, long audio, save/load."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from audiomoe.models.lalm import AudioLanguageModel
from audiomoe.models.presets import build_preset
from audiomoe.models.processor import IGNORE_INDEX, AudioLanguageProcessor


@pytest.fixture(scope="module")
def model() -> AudioLanguageModel:
    return AudioLanguageModel(build_preset("tiny", adapter_type="linear"))


def _noise(seconds: float, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(16000 * seconds))).astype(np.float32)


def test_labels_only_on_the_assistant_answer_and_exact_placeholders(model) -> None:
    proc = model.processor
    clips = [_noise(1.0), _noise(0.55, 1), _noise(2.0, 2)]
    batch = proc(
        ["<audio> What do you hear?", "Compare <audio> with <audio>."], clips, answers=["dog", "same"]
    )
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    # Features: 100 mel frames per second, padded to the longest clip.
    assert batch["audio_lengths"].tolist() == [100, 55, 200]
    assert batch["audio_features"].shape == (3, 80, 200)
    # Whisper conv halves (ceil), stacking by 4 (ceil): 100 -> 50 -> 13, 55 -> 28 -> 7, 200 -> 100 -> 25.
    assert model.audio_token_lengths(batch["audio_lengths"]).tolist() == [13, 7, 25]
    assert (ids == proc.audio_token_id).sum(1).tolist() == [13, 32]
    for b, answer in enumerate(["dog", "same"]):
        supervised = labels[b][labels[b] != IGNORE_INDEX]
        # The answer plus the template's end of turn; nothing of the prompt, no placeholder, no padding.
        assert proc.tokenizer.decode(supervised) == answer + "<|im_end|>\n"
        assert torch.equal(supervised, ids[b][labels[b] != IGNORE_INDEX])
        assert not ((labels[b] != IGNORE_INDEX) & (mask[b] == 0)).any()
        assert not ((labels[b] != IGNORE_INDEX) & (ids[b] == proc.audio_token_id)).any()
    # Training batches pad on the right; the first row is shorter.
    assert mask[0, 0] == 1 and mask[0, -1] == 0
    # The rendered prompt follows the chat template.
    text = proc.tokenizer.decode(ids[0][mask[0].bool()])
    assert (
        text.startswith("<|im_start|>user\n<|audio|>")
        and "What do you hear?<|im_end|>\n<|im_start|>assistant\n" in text
    )


def test_generation_batches_pad_left_and_per_sample_clips_get_tags(model) -> None:
    proc = model.processor
    batch = proc(["Describe it.", "And this?"], [[_noise(0.3)], [_noise(1.0, 1)]])
    assert "labels" not in batch
    assert batch["attention_mask"][:, -1].all() and not batch["attention_mask"][:, 0].all()
    assert (batch["input_ids"] == proc.audio_token_id).sum().item() == int(
        model.audio_token_lengths(batch["audio_lengths"]).sum()
    )


def test_tag_and_clip_count_mismatch_is_a_clear_error(model) -> None:
    with pytest.raises(ValueError, match=r"hold 1 <audio> tag\(s\) but 2 audio clip\(s\)"):
        model.processor(["<audio> hi"], [_noise(0.2), _noise(0.2)])
    with pytest.raises(ValueError, match=r"prompt 0 holds 2 <audio> tag\(s\) but 1 clip"):
        model.processor(["<audio><audio> hi"], [[_noise(0.2)]])
    with pytest.raises(ValueError, match="mono"):
        model.processor(["<audio> hi"], [np.zeros((2, 800), dtype=np.float32)])


def test_a_70_second_clip_is_windowed_not_truncated(model) -> None:
    proc = model.processor
    batch = proc(["<audio> Summarise."], [_noise(70.0)], answers=["ok"])
    assert batch["audio_lengths"].tolist() == [7000]  # every frame of the 70 s, not the first 30 s
    hidden, enc_mask = model.encode_audio(batch["audio_features"], batch["audio_lengths"])
    assert hidden.shape[1] == 3 * 1500 and int(enc_mask.sum()) == 3500  # three 30 s windows concatenated
    n_tokens = int((batch["input_ids"] == proc.audio_token_id).sum())
    assert n_tokens == 875  # ceil(3500 / 4)
    with torch.no_grad():
        out = model(**batch)
    assert torch.isfinite(out.loss) and int(out.adapter_output.mask.sum()) == 875
    # The last window's frames matter: changing only the last 10 s changes the encoder output there.
    other = _noise(70.0)
    other[-160000:] = _noise(10.0, 5)
    hidden2, _ = model.encode_audio(*proc.extract_features([other]))
    assert torch.allclose(hidden2[0, :2500], hidden[0, :2500], atol=1e-5)
    assert not torch.allclose(hidden2[0, 3000:3500], hidden[0, 3000:3500], atol=1e-3)
    strict = AudioLanguageProcessor(
        proc.tokenizer,
        proc.feature_extractor,
        proc.audio_token_lengths,
        type(proc.config)(long_audio="error"),
    )
    with pytest.raises(ValueError, match=r"lasts 70.0 s, longer than the encoder window of 30 s"):
        strict(["<audio> Summarise."], [_noise(70.0)])


def test_processor_save_load_without_the_model(model, tmp_path) -> None:
    model.save_pretrained(tmp_path)
    loaded = AudioLanguageProcessor.from_pretrained(tmp_path)  # length function from meta-device skeletons
    args = (["<audio> What?", "Two <audio> <audio>"], [_noise(0.7), _noise(1.3, 1), _noise(0.2, 2)])
    a, b = model.processor(*args, answers=["x", "y"]), loaded(*args, answers=["x", "y"])
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0)


def test_memoised_prompts_give_the_same_batch_and_cannot_be_corrupted_by_callers(model) -> None:
    proc = model.processor
    clips = [_noise(1.0), _noise(0.55, 1)]
    prompts, answers = ["<audio> What do you hear?", "<audio> Name it."], ["dog", "a cat"]
    proc._text_memo.clear()
    first = proc(prompts, clips, answers=answers)
    assert len(proc._text_memo) == 2  # one entry per (conversation, answer)
    segments, answer_ids = proc._text_ids([{"role": "user", "content": prompts[0]}], "dog")
    segments[0].append(-1)  # a caller mutating what it got back must not change the next batch
    answer_ids.clear()
    again = proc(prompts, clips, answers=answers)
    proc._text_memo.clear()
    fresh = proc(prompts, clips, answers=answers)
    for key in ("input_ids", "labels", "attention_mask"):
        assert torch.equal(first[key], again[key]) and torch.equal(first[key], fresh[key])
    # the same prompt with another answer is another entry, with that answer's labels
    other = proc(prompts[:1], clips[:1], answers=["bird"])
    supervised = other["labels"][0][other["labels"][0] != IGNORE_INDEX]
    assert proc.tokenizer.decode(supervised) == "bird<|im_end|>\n"
