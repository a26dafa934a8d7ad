// audiomoe playground: a clip (upload or microphone) + a question -> the streamed answer from
// /v1/chat/completions and the clip's routing from /v1/audiomoe/routing. No framework, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const model = document.querySelector('meta[name="audiomoe-model"]').content;
let clip = null; // {data: base64 without prefix, format: "wav" | "flac" | ...}
let recorder = null;

function setStatus(text, state, isError = false) {
  const status = $("status");
  status.textContent = text;
  status.dataset.state = state;
  status.classList.toggle("error", isError);
}

function formatOf(file) {
  const ext = (file.name.split(".").pop() || "").toLowerCase();
  if (["wav", "flac", "ogg", "mp3", "aiff"].includes(ext)) return ext;
  const sub = (file.type.split("/")[1] || "").toLowerCase();
  return { "x-wav": "wav", wave: "wav", mpeg: "mp3", "x-flac": "flac" }[sub] || sub || "wav";
}

function readBase64(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1] || "");
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

async function useClip(blob, format, label) {
  clip = { data: await readBase64(blob), format };
  const player = $("player");
  player.src = URL.createObjectURL(blob);
  player.hidden = false;
  $("clip-info").textContent = `${label} (${format}, ${(blob.size / 1024).toFixed(1)} KiB)`;
  $("ask").disabled = false;
  setStatus("ready: ask a question", "ready");
}

$("audio-file").addEventListener("change", async (event) => {
  const file = event.target.files[0];
  if (file) await useClip(file, formatOf(file), file.name);
});

// -- microphone: MediaRecorder's compressed blob is decoded by the browser and sent as 16 kHz mono WAV -------

function encodeWav(samples, rate) {
  const buffer = new ArrayBuffer(44 + samples.length * 2);
  const view = new DataView(buffer);
  const text = (offset, s) => [...s].forEach((c, i) => view.setUint8(offset + i, c.charCodeAt(0)));
  text(0, "RIFF"); view.setUint32(4, 36 + samples.length * 2, true); text(8, "WAVE");
  text(12, "fmt "); view.setUint32(16, 16, true); view.setUint16(20, 1, true); view.setUint16(22, 1, true);
  view.setUint32(24, rate, true); view.setUint32(28, rate * 2, true); view.setUint16(32, 2, true);
  view.setUint16(34, 16, true); text(36, "data"); view.setUint32(40, samples.length * 2, true);
  samples.forEach((s, i) => view.setInt16(44 + i * 2, Math.max(-1, Math.min(1, s)) * 0x7fff, true));
  return new Blob([buffer], { type: "audio/wav" });
}

async function toWav16k(blob) {
  const decoded = await new AudioContext().decodeAudioData(await blob.arrayBuffer());
  const rate = 16000;
  const offline = new OfflineAudioContext(1, Math.ceil(decoded.duration * rate), rate);
  const source = offline.createBufferSource();
  source.buffer = decoded;
  source.connect(offline.destination);
  source.start();
  return encodeWav((await offline.startRendering()).getChannelData(0), rate);
}

$("record").addEventListener("click", async () => {
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    const chunks = [];
    recorder = new MediaRecorder(stream);
    recorder.ondataavailable = (e) => chunks.push(e.data);
    recorder.onstop = async () => {
      stream.getTracks().forEach((t) => t.stop());
      await useClip(await toWav16k(new Blob(chunks, { type: recorder.mimeType })), "wav", "recording");
    };
    recorder.start();
    $("record").disabled = true;
    $("stop").disabled = false;
    setStatus("recording…", "recording");
  } catch (err) {
    setStatus(`cannot record: ${err.message}`, "error", true);
  }
});

$("stop").addEventListener("click", () => {
  if (recorder) recorder.stop();
  $("record").disabled = false;
  $("stop").disabled = true;
});

// -- answer: server-sent events in OpenAI's chunk format ---------------------------------------------------

async function errorMessage(response) {
  try {
    return (await response.json()).error.message;
  } catch {
    return `HTTP ${response.status}`;
  }
}

async function streamAnswer(question) {
  const answer = $("answer");
  answer.textContent = "";
  const body = {
    model,
    stream: true,
    max_tokens: Number($("max-tokens").value) || 64,
    temperature: Number($("temperature").value) || 0,
    messages: [{ role: "user", content: [
      { type: "input_audio", input_audio: clip },
      { type: "text", text: question },
    ] }],
  };
  const response = await fetch("/v1/chat/completions", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  if (!response.ok) throw new Error(await errorMessage(response));
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffered = "";
  let finish = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffered += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffered.indexOf("\n\n")) >= 0) {
      const line = buffered.slice(0, cut).trim();
      buffered = buffered.slice(cut + 2);
      if (!line.startsWith("data:")) continue;
      const payload = line.slice(5).trim();
      if (payload === "[DONE]") return finish;
      const event = JSON.parse(payload);
      if (event.error) throw new Error(event.error.message);
      for (const choice of event.choices || []) {
        if (choice.delta && choice.delta.content) answer.textContent += choice.delta.content;
        if (choice.finish_reason) finish = choice.finish_reason;
      }
    }
  }
  return finish;
}

// -- routing: the figure from the analysis package, and this clip's expert load drawn as bars --------------

function drawLoad(load) {
  const box = $("load");
  box.replaceChildren();
  const peak = Math.max(...load, 1 / load.length);
  load.forEach((share, e) => {
    const bar = document.createElement("div");
    bar.className = "load-bar";
    bar.dataset.expert = String(e);
    bar.dataset.share = String(share);
    bar.style.height = `${(100 * share) / peak}%`;
    bar.title = `expert ${e}: ${(100 * share).toFixed(1)}% of this clip's routed slots`;
    bar.innerHTML = `<b>${(100 * share).toFixed(0)}%</b><span>E${e}</span>`;
    box.appendChild(bar);
  });
  const uniform = document.createElement("div");
  uniform.className = "uniform";
  uniform.style.bottom = `${(100 / load.length) / peak}%`;
  uniform.title = "uniform load 1/E";
  box.appendChild(uniform);
}

async function showRouting() {
  const response = await fetch("/v1/audiomoe/routing", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ input_audio: clip }),
  });
  if (!response.ok) throw new Error(await errorMessage(response));
  const routing = await response.json();
  const note = $("routing-note");
  if (!routing.routed) {
    note.textContent = `the ${routing.adapter} adapter is dense: every frame goes through the same weights`;
    $("routing-image").hidden = true;
    $("load").replaceChildren();
    return;
  }
  const image = $("routing-image");
  await new Promise((resolve, reject) => {
    image.onload = resolve;
    image.onerror = () => reject(new Error("the routing image did not load"));
    image.src = routing.image;
  });
  image.hidden = false;
  note.textContent = `${routing.adapter} adapter, ${routing.num_experts} experts, ${routing.frames} frames ` +
    `over ${routing.seconds.toFixed(2)} s`;
  drawLoad(routing.load);
}

$("ask").addEventListener("click", async () => {
  if (!clip) return;
  $("ask").disabled = true;
  setStatus("answering…", "busy");
  const results = await Promise.allSettled([streamAnswer($("question").value), showRouting()]);
  $("ask").disabled = false;
  const failed = results.filter((r) => r.status === "rejected").map((r) => r.reason.message);
  if (failed.length) setStatus(failed.join("; "), "error", true);
  else setStatus(`done (${results[0].value || "stop"})`, "done");
});
