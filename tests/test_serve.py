"""`audiomoe serve` end to end: the official `openai` client against a real uvicorn server on a free port.

One tiny MoE model (random init, saved and loaded back as `audiomoe serve` loads it) serves every test here.
Answers are greedy, so the server's answer to a clip must equal `model.generate` on the same prompt in-process,
whether it was streamed, batched with other requests, or answered alone.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import http.client
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openai
import pytest
import soundfile as sf
import torch
import uvicorn

from audiomoe.cli.main import main
from audiomoe.models.lalm import AudioLanguageModel
from audiomoe.models.presets import build_preset
from audiomoe.serve.app import ServeSettings, create_app
from audiomoe.serve.batcher import DynamicBatcher, Event, Job, NotRunning, collate, prepare
from audiomoe.serve.protocol import Prompt
from audiomoe.serve.routing import clip_routing

SR = 16000
MODEL = "tiny-moe"
QUESTION = "What do you hear?"


def tone(freq: float, seconds: float = 1.0, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    noise = np.random.default_rng(seed).standard_normal(t.size)
    return (0.4 * np.sin(2 * np.pi * freq * t) + 0.05 * noise).astype(np.float32)


def wav_bytes(wave: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, wave, SR, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def audio_messages(data: str, fmt: str = "wav", question: str = QUESTION) -> list[dict]:
    return [
        {
            "role": "user",
            "content": [
                {"type": "input_audio", "input_audio": {"data": data, "format": fmt}},
                {"type": "text", "text": question},
            ],
        }
    ]


def b64(wave: np.ndarray) -> str:
    return base64.b64encode(wav_bytes(wave)).decode("ascii")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Running:
    """A uvicorn server in a thread of this process (real sockets, real HTTP)."""

    def __init__(
        self, model: AudioLanguageModel | None, settings: ServeSettings | None = None, app=None
    ) -> None:
        self.app = app if app is not None else create_app(model, settings)
        self.port = free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)

    @property
    def batcher(self) -> DynamicBatcher:
        return self.app.state.batcher

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, **kwargs) -> openai.OpenAI:
        return openai.OpenAI(api_key="unused", base_url=f"{self.url}/v1", **kwargs)

    def raw(self, method: str, path: str, body: bytes | None = None) -> tuple[int, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            return response.status, json.loads(response.read() or b"{}")
        finally:
            conn.close()

    def raw_text(self, method: str, path: str, body: bytes | None = None) -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            return response.status, response.read().decode("utf-8", "replace")
        finally:
            conn.close()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def readable_random_model() -> AudioLanguageModel:
    """The tiny MoE preset with its LLM re-drawn so that greedy answers depend on the prompt and are lower-case
    letters and spaces (the default init answers every clip with the same few bytes; a byte tokenizer's stray
    bytes are no text to compare in a browser). Untrained: these tests are about the plumbing, not the answers."""
    model = AudioLanguageModel(build_preset("tiny", adapter_type="moe"))
    tokenizer = model.processor.tokenizer
    letters = tokenizer("abcdefghijklmnopqrstuvwxyz ", add_special_tokens=False)["input_ids"]
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.llm.parameters():
            if param.ndim == 2:
                param.normal_(0.0, 0.2, generator=generator)
        head = model.llm.get_output_embeddings().weight
        others = torch.ones(head.shape[0], dtype=torch.bool)
        others[letters] = False
        head[others] = 0.0  # a zero logit loses to the best letter's positive one
    return model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("serve") / "tiny-moe"
    readable_random_model().save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def model(model_dir: Path) -> AudioLanguageModel:
    return AudioLanguageModel.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def server(model: AudioLanguageModel) -> Iterator[Running]:
    running = Running(
        model, ServeSettings(model_name=MODEL, max_batch=8, max_wait_ms=40, max_tokens_limit=64)
    )
    yield running
    running.stop()


def expected(model: AudioLanguageModel, wave: np.ndarray, max_tokens: int, question: str = QUESTION) -> str:
    """The answer `audiomoe infer` gives: the same prompt, alone, in-process."""
    batch = model.processor([question], [[wave]])
    return model.generate(**batch, max_new_tokens=max_tokens)[0]


def test_openai_client_answers_input_audio_streaming_and_not(server: Running, model) -> None:
    wave = tone(440)
    client = server.client()
    whole = client.chat.completions.create(model=MODEL, messages=audio_messages(b64(wave)), max_tokens=12)
    answer = whole.choices[0].message.content
    assert answer == expected(model, wave, 12)
    assert answer, "a random tiny model still says something in 12 tokens"
    assert whole.choices[0].finish_reason in ("stop", "length")
    assert whole.usage.completion_tokens <= 12 and whole.usage.prompt_tokens > 13  # 13 audio tokens + text

    stream = client.chat.completions.create(
        model=MODEL, messages=audio_messages(b64(wave)), max_tokens=12, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(deltas) > 1, "streamed in pieces, not as one block"
    assert "".join(deltas) == answer
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens

    listed = client.models.list()
    assert [m.id for m in listed.data] == [MODEL]


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(server: Running, model) -> None:
    waves = [tone(f, seed=i) for i, f in enumerate((220, 440, 880, 1760))]
    wanted = [expected(model, w, 12) for w in waves]
    assert len(set(wanted)) > 1, "the clips must give different answers for this test to mean something"
    before = server.batcher.stats.largest_batch
    client = server.client()

    def ask(i: int) -> str:
        messages = audio_messages(b64(waves[i % 4]))
        return (
            client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12)
            .choices[0]
            .message.content
        )

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(8)))
    assert answers == [wanted[i % 4] for i in range(8)]
    status, health = server.raw("GET", "/health")
    assert status == 200 and health["status"] == "ok"
    assert max(before, health["largest_batch"]) > 1, f"no request shared a batch: {health['batch_sizes']}"


def test_bad_audio_gets_a_clear_400_and_the_server_keeps_serving(server: Running, model) -> None:
    client = server.client(max_retries=0)
    garbage = base64.b64encode(b"this is not a wav file at all" * 4).decode()
    cases = {
        garbage: "cannot decode the audio as wav (Format not recognised.)",
        "%%% not base64 %%%": "not valid base64",
        "": "empty",
    }
    for data, words in cases.items():
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model=MODEL, messages=audio_messages(data))
        assert words in caught.value.message and "messages[0].content[0]" in caught.value.message
    with pytest.raises(openai.BadRequestError, match="format 'aac' is not supported"):
        client.chat.completions.create(model=MODEL, messages=audio_messages(b64(tone(300)), fmt="aac"))
    nan_wave = tone(300)
    nan_wave[100] = np.nan
    nan_wav = io.BytesIO()
    sf.write(nan_wav, nan_wave, SR, format="WAV", subtype="FLOAT")
    with pytest.raises(openai.BadRequestError, match="NaN/inf"):
        data = base64.b64encode(nan_wav.getvalue()).decode()
        client.chat.completions.create(model=MODEL, messages=audio_messages(data))
    with pytest.raises(openai.BadRequestError, match="content part type 'image_url' is not supported"):
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
        )
    with pytest.raises(openai.BadRequestError, match="marks audio"):
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi <audio> there"}]
        )
    with pytest.raises(openai.BadRequestError, match="exceeds this server's limit of 64"):
        client.chat.completions.create(model=MODEL, messages=audio_messages(b64(tone(300))), max_tokens=1000)
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.chat.completions.create(model="gpt-4o", messages=audio_messages(b64(tone(300))))

    status, body = server.raw("POST", "/v1/chat/completions", b"{not json")
    assert status == 400 and "not valid JSON" in body["error"]["message"]
    status, body = server.raw(
        "POST", "/v1/chat/completions", json.dumps({"model": MODEL, "messages": []}).encode()
    )
    assert status == 400 and body["error"]["message"].startswith("messages:")
    status, body = server.raw(
        "POST", "/v1/chat/completions", b'{"model": "tiny-moe", "messages": [{"role": 7}]}'
    )
    assert status == 400 and "messages[0].role" in body["error"]["message"]
    status, body = server.raw("GET", "/v1/nothing")
    assert status == 404 and "no such path" in body["error"]["message"]

    wave = tone(440)  # and it still answers, the same as before
    good = client.chat.completions.create(model=MODEL, messages=audio_messages(b64(wave)), max_tokens=6)
    assert good.choices[0].message.content == expected(model, wave, 6)


def test_too_large_and_too_long_requests_are_refused(model) -> None:
    running = Running(model, ServeSettings(model_name=MODEL, max_body_bytes=200_000, max_audio_seconds=2.0))
    try:
        client = running.client(max_retries=0)
        with pytest.raises(openai.BadRequestError, match=r"lasts 3\.0 s, over this server's 2 s"):
            client.chat.completions.create(model=MODEL, messages=audio_messages(b64(tone(300, seconds=3.0))))
        with pytest.raises(openai.APIStatusError) as caught:  # 10 s of 16-bit audio: 320 kB
            client.chat.completions.create(model=MODEL, messages=audio_messages(b64(tone(300, seconds=10.0))))
        assert caught.value.status_code == 413 and "over this server's 200000" in caught.value.message
        # Sent in chunks without a Content-Length: refused as the bytes arrive.
        body = json.dumps({"model": MODEL, "messages": audio_messages(b64(tone(300, seconds=10.0)))}).encode()
        conn = http.client.HTTPConnection("127.0.0.1", running.port, timeout=60)
        chunks = (body[i : i + 65536] for i in range(0, len(body), 65536))
        conn.request("POST", "/v1/chat/completions", body=chunks, encode_chunked=True,
                     headers={"Content-Type": "application/json"})  # fmt: skip
        response = conn.getresponse()
        assert response.status == 413 and "200000 bytes" in json.loads(response.read())["error"]["message"]
        conn.close()
        assert client.chat.completions.create(
            model=MODEL, messages=audio_messages(b64(tone(300))), max_tokens=3
        )
    finally:
        running.stop()


def test_full_queue_gets_429_and_a_stopped_worker_503(server: Running, model) -> None:
    batcher = server.batcher
    client = server.client(max_retries=0)
    release = threading.Event()
    saved_queue = batcher.max_queue
    batcher.max_queue = 1
    try:
        busy = batcher.call(lambda: release.wait(30))  # the worker is busy with this
        deadline = time.monotonic() + 10
        while batcher.queued and time.monotonic() < deadline:  # until the worker has taken it
            time.sleep(0.01)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(
                client.chat.completions.create,
                model=MODEL,
                messages=audio_messages(b64(tone(500))),
                max_tokens=3,
            )
            while batcher.queued < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert batcher.queued == 1
            with pytest.raises(openai.RateLimitError, match="busy") as caught:
                client.chat.completions.create(model=MODEL, messages=audio_messages(b64(tone(600))))
            assert caught.value.response.headers["retry-after"] == "1"
            release.set()
            assert waiting.result(timeout=60).choices[0].message.content == expected(model, tone(500), 3)
        assert busy.result(timeout=10) is True
    finally:
        release.set()
        batcher.max_queue = saved_queue
    batcher.stop()
    try:
        with pytest.raises(openai.InternalServerError) as caught:
            client.chat.completions.create(model=MODEL, messages=audio_messages(b64(tone(500))))
        assert caught.value.status_code == 503 and "not serving" in caught.value.message
    finally:
        batcher.start()
    assert client.chat.completions.create(model=MODEL, messages=audio_messages(b64(tone(500))), max_tokens=3)


def test_routing_endpoint_gives_this_clips_experts_load_and_figure(server: Running, model) -> None:
    wave = tone(440)
    status, body = server.raw(
        "POST", "/v1/audiomoe/routing", json.dumps({"input_audio": {"data": b64(wave)}}).encode()
    )
    assert status == 200 and body["routed"] and body["adapter"] == "moe"
    direct = clip_routing(model, wave)
    assert body["frames"] == direct["frames"] == len(body["expert_indices"]) == len(body["top1"])
    assert body["expert_indices"] == direct["expert_indices"].tolist()
    assert len(body["load"]) == body["num_experts"] == 8
    assert abs(sum(body["load"]) - 1) < 1e-5
    counts = np.bincount(np.array(body["expert_indices"]).ravel(), minlength=8)
    assert np.allclose(body["load"], counts / counts.sum(), atol=1e-6)
    png = base64.b64decode(body["image"].split(",", 1)[1])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    status, body = server.raw(
        "POST", "/v1/audiomoe/routing", b'{"input_audio": {"data": "AAAA", "format": "wav"}}'
    )
    assert status == 400 and "cannot decode" in body["error"]["message"]


def test_dense_adapter_has_no_routing_and_batcher_refuses_when_stopped() -> None:
    dense = AudioLanguageModel(build_preset("tiny", adapter_type="linear"))
    result = clip_routing(dense, tone(440))
    assert result["routed"] is False and result["frames"] > 0
    batcher = DynamicBatcher(dense)
    prompt = Prompt([{"role": "user", "content": "hi"}], [], max_tokens=2)
    with pytest.raises(NotRunning):
        batcher.submit(Job(prompt, {}, loop=None))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_batch"):
        DynamicBatcher(dense, max_batch=0)


def test_audiomoe_serve_command_serves_the_checkpoint(model_dir: Path, model, monkeypatch) -> None:
    """The command's wiring (checkpoint, options, model id), with uvicorn.run swapped for a server we can stop."""
    handed: dict = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: handed.update(app=app, **kwargs))
    threads = str(torch.get_num_threads())  # as it is: the command sets torch's threads for this process
    args = [
        "serve",
        "--checkpoint",
        str(model_dir),
        "--port",
        "8123",
        "--max-batch",
        "3",
        "--threads",
        threads,
    ]
    assert main(args) == 0
    assert (handed["host"], handed["port"]) == ("127.0.0.1", 8123)
    settings = handed["app"].state.settings
    assert (settings.model_name, settings.max_batch) == (MODEL, 3)
    running = Running(None, app=handed["app"])
    try:
        wave = tone(440)
        reply = running.client().chat.completions.create(
            model=MODEL, messages=audio_messages(b64(wave)), max_tokens=5
        )
        assert reply.choices[0].message.content == expected(model, wave, 5)
    finally:
        running.stop()
    assert main(["serve", "--checkpoint", str(model_dir / "missing")]) == 2  # one line, no traceback


def test_collate_makes_the_processors_batch(model) -> None:
    """Requests are featurised one by one on arrival; padded together they must be the processor's own batch."""
    tag = model.processor.config.audio_tag
    prompts = [
        Prompt([{"role": "user", "content": f"{tag}\nWhat is it?"}], [tone(300, 1.0)], 4),
        Prompt([{"role": "user", "content": "no audio, a longer question than the others"}], [], 4),
        Prompt([{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"{tag}\n{tag}\nAnd?"}],
               [tone(500, 2.0), tone(700, 0.5)], 4),
    ]  # fmt: skip
    batched = collate([prepare(model, p) for p in prompts], model.processor.pad_token_id)
    reference = model.processor([p.conversation for p in prompts], [p.clips for p in prompts])
    assert batched.keys() == reference.keys()
    for key, value in reference.items():
        assert torch.equal(batched[key], value), key


def test_a_failing_batch_is_retried_request_by_request(model) -> None:
    """One request the model refuses (here: inputs whose placeholders do not fit its clip) fails alone."""
    tag = model.processor.config.audio_tag
    good_prompt = Prompt([{"role": "user", "content": f"{tag}\n{QUESTION}"}], [tone(440)], 6)
    good = prepare(model, good_prompt)
    bad = {**good, "audio_lengths": good["audio_lengths"] // 2}
    batcher = DynamicBatcher(model, max_batch=4, max_wait_s=0.5)

    async def ask() -> list[list[Event]]:
        loop = asyncio.get_running_loop()
        jobs = [Job(good_prompt, good, loop), Job(good_prompt, bad, loop), Job(good_prompt, good, loop)]
        for job in jobs:
            batcher.submit(job)
        heard: list[list[Event]] = []
        for job in jobs:
            events = [await job.events.get()]
            while events[-1].kind == "delta":
                events.append(await job.events.get())
            heard.append(events)
        return heard

    batcher.start()
    try:
        first, refused, third = asyncio.run(ask())
    finally:
        batcher.stop()
    assert (
        batcher.stats.sizes[3] == 1 and batcher.stats.failed_batches == 2
    )  # the batch, then the bad one alone
    assert refused[-1].kind == "error" and "placeholder" in refused[-1].text
    for events in (first, third):
        assert events[-1].kind == "done"
        assert "".join(e.text for e in events[:-1]) == expected(model, tone(440), 6)


def test_a_prompt_longer_than_the_model_is_a_400(server: Running) -> None:
    client = server.client(max_retries=0)
    with pytest.raises(openai.BadRequestError, match="exceeds the model's 8192 positions"):
        client.chat.completions.create(
            model=MODEL, messages=audio_messages(b64(tone(300)), question="go " * 3000)
        )


CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def browser() -> Iterator:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("needs Debian's chromium + chromedriver (`make test` installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                 "--autoplay-policy=no-user-gesture-required"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def wait_for_state(driver, states: tuple[str, ...], seconds: float = 30.0) -> str:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, seconds).until(
        lambda d: d.find_element("id", "status").get_attribute("data-state") in states
    )
    return driver.find_element("id", "status").get_attribute("data-state")


def test_playground_upload_streams_the_answer_and_shows_the_routing(
    server: Running, model, browser, tmp_path: Path
) -> None:
    wave = tone(660, seconds=1.5)
    path = tmp_path / "clip.wav"
    path.write_bytes(wav_bytes(wave))
    browser.get(server.url + "/")
    assert browser.title == "audiomoe playground"
    assert browser.find_element("id", "model-name").text == MODEL
    browser.find_element("id", "audio-file").send_keys(str(path))
    wait_for_state(browser, ("ready",))
    question = browser.find_element("id", "question")
    question.clear()
    question.send_keys("Which sound is this?")
    max_tokens = browser.find_element("id", "max-tokens")
    max_tokens.clear()
    max_tokens.send_keys("10")
    browser.find_element("id", "ask").click()
    assert wait_for_state(browser, ("done", "error")) == "done", browser.find_element("id", "status").text

    # The WAV travelled as sent: the same greedy answer as in-process (read as DOM text, not as rendered).
    answer = browser.execute_script("return document.getElementById('answer').textContent")
    # Decoded by the browser and re-read by soundfile: 16-bit PCM, so the samples are the file's, exactly.
    assert answer == expected(model, sf.read(path, dtype="float32")[0], 10, "Which sound is this?")
    image = browser.execute_script(
        "const i = document.getElementById('routing-image'); return [i.complete, i.naturalWidth, i.hidden]"
    )
    assert image[0] and image[1] > 300 and not image[2], image
    shares = browser.execute_script(
        "return [...document.querySelectorAll('.load-bar')].map(b => Number(b.dataset.share))"
    )
    routing = clip_routing(model, sf.read(path, dtype="float32")[0])
    assert len(shares) == routing["num_experts"]
    assert np.allclose(shares, routing["load"], atol=1e-5)
    note = browser.find_element("id", "routing-note").text
    assert f"{routing['frames']} frames" in note and "8 experts" in note


def test_playground_records_from_the_microphone(server: Running, browser) -> None:
    # Chromium's fake capture device stands in for a microphone: record, stop, ask.
    browser.get(server.url + "/")
    browser.find_element("id", "record").click()
    wait_for_state(browser, ("recording", "error"))
    time.sleep(1.0)
    browser.find_element("id", "stop").click()
    assert wait_for_state(browser, ("ready", "error")) == "ready", browser.find_element("id", "status").text
    assert "recording (wav" in browser.find_element("id", "clip-info").text
    browser.find_element("id", "ask").click()
    assert wait_for_state(browser, ("done", "error")) == "done", browser.find_element("id", "status").text
    assert browser.execute_script("return document.getElementById('answer').textContent")
    assert browser.execute_script("return document.getElementById('routing-image').naturalWidth") > 300


def test_no_input_crashes_the_server(server: Running) -> None:
    """Random request bodies shaped like chat completions: every answer is a 200 or a 4xx with an OpenAI error
    body (never a 500, never a dropped connection), and the server answers a good request afterwards."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    good_audio = {"data": b64(tone(300, 0.3)), "format": "wav"}
    scalar = st.one_of(
        st.none(), st.booleans(), st.integers(-3, 3), st.text(max_size=8), st.floats(allow_nan=True)
    )
    part = st.one_of(
        scalar,
        st.fixed_dictionaries({"type": st.sampled_from(["text", "input_audio", "image_url", 3]), "text": scalar}),
        st.fixed_dictionaries({"type": st.just("input_audio"), "input_audio": st.one_of(
            scalar, st.just(good_audio), st.fixed_dictionaries({"data": scalar, "format": scalar}))}),
    )  # fmt: skip
    message = st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "assistant", "tool", 5]),
         "content": st.one_of(scalar, st.lists(part, max_size=3))}
    )  # fmt: skip
    body = st.fixed_dictionaries(
        {"model": st.sampled_from([MODEL, "other", 1]), "messages": st.one_of(scalar, st.lists(message, max_size=3)),
         "max_tokens": st.sampled_from([1, 2, 0, -1, "x", 10**9])},  # never the default 64: seconds per example
        optional={"stream": st.one_of(st.booleans(), scalar), "temperature": st.sampled_from([0, 0.5, -1, 9, "hot"]),
                  "top_p": st.sampled_from([0.5, 0, 2])},
    )  # fmt: skip

    @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(body)
    def check(request: dict) -> None:
        status, answer = server.raw_text("POST", "/v1/chat/completions", json.dumps(request).encode())
        assert status == 200 or (400 <= status < 500), (status, answer, request)
        if status != 200:
            assert json.loads(answer)["error"]["message"]

    check()
    assert (
        server.client()
        .chat.completions.create(model=MODEL, messages=audio_messages(b64(tone(440))), max_tokens=2)
        .choices[0]
        .message.content
    )
