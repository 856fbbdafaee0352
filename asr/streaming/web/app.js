// The streaming-recognition page: microphone (or a chosen file) -> 16 kHz float32 PCM -> the server's websocket;
// partial results shown as they change, final segments listed. No build step, nothing fetched from elsewhere.
// `?seconds=N` in the page's address stops the microphone after N seconds of audio (from its first sound).
"use strict";

const TARGET_RATE = 16000;
const PIECE_SAMPLES = 1600; // 100 ms per websocket frame

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const maxSeconds = params.has("seconds") ? Number(params.get("seconds")) : Infinity;

// Polyphase resampling to 16 kHz, block by block, the same filter as the server's and the toolkit's offline
// resampling (scipy's resample_poly): the rates' ratio reduced to up/down, a Kaiser-windowed (beta 5) sinc
// low-pass of 2 * 10 * max(up, down) + 1 taps at the lower Nyquist rate. Output m is
// sum_k h[half + m * down - k * up] * x[k]; inputs before the start and after the end count as zeros.
class Resampler {
  constructor(inputRate) {
    const common = gcd(inputRate, TARGET_RATE);
    this.up = TARGET_RATE / common;
    this.down = inputRate / common;
    this.identity = this.up === 1 && this.down === 1;
    const maxRate = Math.max(this.up, this.down);
    this.half = 10 * maxRate;
    this.h = lowPass(2 * this.half + 1, 1 / maxRate, this.up);
    this.buffer = new Float32Array(0); // input from index this.start on
    this.start = 0;
    this.received = 0; // input samples so far
    this.next = 0; // index of the next output sample
  }

  push(block) {
    if (this.identity) return Float32Array.from(block);
    const joined = new Float32Array(this.buffer.length + block.length);
    joined.set(this.buffer);
    joined.set(block, this.buffer.length);
    this.buffer = joined;
    this.received += block.length;
    return this.emit(this.received);
  }

  // No more input: the rest of the ceil(n * up / down) outputs, with zeros after the end.
  finish() {
    if (this.identity) return new Float32Array(0);
    return this.emit(Infinity);
  }

  emit(available) {
    const total = Math.ceil((this.received * this.up) / this.down);
    const out = [];
    while (this.next < total) {
      // the last input output m reads: k <= (m * down + half) / up
      const last = Math.floor((this.next * this.down + this.half) / this.up);
      if (last >= available) break;
      out.push(this.sample(this.next));
      this.next += 1;
    }
    // keep the inputs the next output still reads: k >= (m * down - half) / up
    const first = Math.max(0, Math.ceil((this.next * this.down - this.half) / this.up));
    if (first > this.start) {
      this.buffer = this.buffer.slice(Math.min(first - this.start, this.buffer.length));
      this.start = first;
    }
    return Float32Array.from(out);
  }

  sample(m) {
    const center = m * this.down + this.half; // filter index of input k is center - k * up
    const lo = Math.max(0, Math.ceil((center - 2 * this.half) / this.up));
    const hi = Math.min(this.received - 1, Math.floor(center / this.up));
    let sum = 0;
    for (let k = lo; k <= hi; k++) sum += this.h[center - k * this.up] * this.buffer[k - this.start];
    return sum;
  }
}

function gcd(a, b) {
  while (b) [a, b] = [b, a % b];
  return a;
}

// scipy's firwin(taps, cutoff, window=("kaiser", 5.0)), scaled to unit gain at 0 Hz, times `gain`.
function lowPass(taps, cutoff, gain) {
  const h = new Float64Array(taps);
  const alpha = (taps - 1) / 2;
  let sum = 0;
  for (let n = 0; n < taps; n++) {
    const m = n - alpha;
    const x = cutoff * m;
    const sinc = x === 0 ? 1 : Math.sin(Math.PI * x) / (Math.PI * x);
    const r = (2 * n) / (taps - 1) - 1;
    const window = besselI0(5.0 * Math.sqrt(Math.max(0, 1 - r * r))) / besselI0(5.0);
    h[n] = cutoff * sinc * window;
    sum += h[n];
  }
  for (let n = 0; n < taps; n++) h[n] = (h[n] / sum) * gain;
  return h;
}

// The modified Bessel function of the first kind, order 0, by its power series.
function besselI0(x) {
  let term = 1;
  let sum = 1;
  for (let k = 1; k < 60; k++) {
    term *= (x / (2 * k)) * (x / (2 * k));
    sum += term;
    if (term < sum * 1e-17) break;
  }
  return sum;
}

// One recognition session over one websocket.
class Session {
  constructor(onClosed) {
    this.ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/`);
    this.ws.binaryType = "arraybuffer";
    this.queue = []; // float32 pieces waiting for the server's "ready"
    this.ready = false;
    this.pending = new Float32Array(0);
    this.sent = 0;
    this.ended = false;
    this.ws.onopen = () => this.ws.send(JSON.stringify({ type: "start", sample_rate: TARGET_RATE, format: "float32" }));
    this.ws.onmessage = (event) => this.onMessage(JSON.parse(event.data));
    this.ws.onclose = (event) => onClosed(event);
  }

  onMessage(message) {
    if (message.type === "ready") {
      this.ready = true;
      for (const piece of this.queue) this.ws.send(piece);
      this.queue = [];
      if (this.ended) this.ws.send(JSON.stringify({ type: "end" }));
    } else if (message.type === "partial") {
      $("partial").textContent = message.text;
    } else if (message.type === "final") {
      $("partial").textContent = "";
      addFinal(message);
    } else if (message.type === "done") {
      setState("done", `done: ${message.segments} segment(s), ${message.audio_seconds.toFixed(2)} s of audio`);
    } else if (message.type === "error") {
      setState("error", `server: ${message.message}`);
    }
  }

  // Queue 16 kHz samples; whole 100 ms pieces go out.
  send(samples) {
    const joined = new Float32Array(this.pending.length + samples.length);
    joined.set(this.pending);
    joined.set(samples, this.pending.length);
    let offset = 0;
    for (; offset + PIECE_SAMPLES <= joined.length; offset += PIECE_SAMPLES) {
      this.transmit(joined.slice(offset, offset + PIECE_SAMPLES));
    }
    this.pending = joined.slice(offset);
  }

  transmit(piece) {
    this.sent += piece.length;
    $("seconds").textContent = (this.sent / TARGET_RATE).toFixed(1);
    if (this.ready) this.ws.send(piece.buffer);
    else this.queue.push(piece.buffer);
  }

  end() {
    if (this.pending.length) this.transmit(this.pending);
    this.pending = new Float32Array(0);
    this.ended = true;
    if (this.ready) this.ws.send(JSON.stringify({ type: "end" }));
  }
}

function addFinal(message) {
  if (!message.text) return;
  const item = document.createElement("li");
  const time = document.createElement("span");
  time.className = "time";
  const start = message.start_time;
  time.textContent = `${start.toFixed(2)}–${message.audio_seconds.toFixed(2)} s`;
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = message.text;
  item.append(time, text);
  $("finals").append(item);
}

function setState(state, text) {
  document.body.dataset.state = state;
  $("status").textContent = text;
  const button = $("start");
  button.textContent = state === "recording" ? "Stop" : "Start microphone";
  button.classList.toggle("recording", state === "recording");
}

function onClosed(event) {
  if (document.body.dataset.state !== "done" && document.body.dataset.state !== "error") {
    setState("error", `connection closed (${event.code}${event.reason ? ": " + event.reason : ""})`);
  }
  stopCapture();
}

let capture = null; // {context, stream, node, session, resampler, taken, sounding}

async function startMicrophone() {
  $("finals").replaceChildren();
  $("partial").textContent = "";
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    });
  } catch (error) {
    setState("error", `microphone: ${error.message}`);
    return;
  }
  const context = new AudioContext();
  await context.audioWorklet.addModule("recorder-worklet.js");
  const source = context.createMediaStreamSource(stream);
  const node = new AudioWorkletNode(context, "recorder");
  const session = new Session(onClosed);
  const resampler = new Resampler(context.sampleRate);
  const limit = Math.round(maxSeconds * TARGET_RATE);
  capture = { context, stream, node, session, resampler, taken: 0, sounding: false };
  node.port.onmessage = (event) => {
    if (!capture || capture.session !== session) return;
    let block = event.data;
    if (!capture.sounding) {
      // Skip the digital silence (exact zeros) a capture device gives while it starts up.
      const first = block.findIndex((v) => v !== 0);
      if (first < 0) return;
      capture.sounding = true;
      block = block.subarray(first);
    }
    let samples = resampler.push(block);
    if (capture.taken + samples.length > limit) samples = samples.subarray(0, limit - capture.taken);
    capture.taken += samples.length;
    session.send(samples);
    if (capture.taken >= limit) stopMicrophone();
  };
  source.connect(node);
  setState("recording", `recording at ${context.sampleRate} Hz, sending 16 kHz`);
}

function stopCapture() {
  if (!capture) return null;
  const { context, stream, node } = capture;
  node.port.onmessage = null;
  stream.getTracks().forEach((track) => track.stop());
  context.close();
  const stopped = capture;
  capture = null;
  return stopped;
}

function stopMicrophone() {
  const stopped = stopCapture();
  if (!stopped) return;
  if (!Number.isFinite(maxSeconds)) stopped.session.send(stopped.resampler.finish());
  stopped.session.end();
  setState("finishing", "finishing: waiting for the last segment");
}

async function streamFile(file) {
  $("finals").replaceChildren();
  $("partial").textContent = "";
  setState("finishing", `streaming ${file.name}`);
  let audio;
  try {
    const context = new AudioContext();
    audio = await context.decodeAudioData(await file.arrayBuffer());
    context.close();
  } catch (error) {
    setState("error", `${file.name}: cannot decode audio (${error.message || error})`);
    return;
  }
  // Mix down to mono, then 16 kHz in 100 ms blocks of the file's rate.
  const mono = new Float32Array(audio.length);
  for (let c = 0; c < audio.numberOfChannels; c++) {
    const channel = audio.getChannelData(c);
    for (let i = 0; i < mono.length; i++) mono[i] += channel[i] / audio.numberOfChannels;
  }
  const session = new Session(onClosed);
  const resampler = new Resampler(audio.sampleRate);
  const block = Math.round(audio.sampleRate / 10);
  for (let offset = 0; offset < mono.length; offset += block) {
    session.send(resampler.push(mono.subarray(offset, offset + block)));
  }
  session.send(resampler.finish());
  session.end();
}

$("start").addEventListener("click", () => {
  if (capture) stopMicrophone();
  else startMicrophone();
});
$("file").addEventListener("change", (event) => {
  if (capture) stopMicrophone();
  if (event.target.files.length) streamFile(event.target.files[0]);
});
setState("idle", "idle");
