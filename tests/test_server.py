"""`asr serve` and `asr client`: transcripts over the websocket server against the offline chunked decode of
the same model, concurrency, faults, limits, shutdown, and the browser page in a real Chromium.

Servers run on 127.0.0.1 with a free port, in a background thread (or a subprocess for the CLI); every wait
is bounded.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from lhotse import load_manifest

pytest.importorskip("websockets", reason="the serve extra is not installed: pip install -e '.[serve]'")

from asr import cli  # noqa: E402
from asr.checkpoint import save_model  # noqa: E402
from asr.data.audio import load_audio, resample  # noqa: E402
from asr.inference import Recognizer  # noqa: E402
from asr.streaming import EndpointConfig, EndpointRule, OnlineRecognizer  # noqa: E402
from asr.streaming.client import ServerError, stream_audio, transcribe_file  # noqa: E402
from asr.streaming.server import ServerConfig, ServerThread  # noqa: E402

from helpers.streaming_models import streaming_options, tiny_causal_model  # noqa: E402
from helpers.ws_clients import raw_exchange  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
IDLE_SECONDS = 1.5
MAX_FRAME_BYTES = 64 * 1024
START16 = json.dumps({"type": "start", "sample_rate": 16000, "format": "int16"})
END = json.dumps({"type": "end"})

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model(corpus):
    return tiny_causal_model("zipformer-xs", corpus["lang"])


@pytest.fixture(scope="module")
def wavs(corpus) -> dict[str, Path]:
    """The synth test and dev utterances: id -> 16-bit 16 kHz wav."""
    cuts = [*load_manifest(corpus["test"]), *load_manifest(corpus["dev"])]
    return {cut.id: Path(cut.recording.sources[0].source) for cut in cuts}


@pytest.fixture(scope="module")
def offline(model, wavs) -> dict[str, str]:
    """The chunked offline decode (`asr decode --chunk-size`) of each utterance."""
    clips = [load_audio(path, 16000) for path in wavs.values()]
    results = Recognizer(model, streaming_options("zipformer-xs")).transcribe_batch(clips, 16000)
    assert all(len(r.token_ids) >= 5 for r in results), [r.text for r in results]
    return {utt: r.text for utt, r in zip(wavs, results)}


def recognizer(model) -> OnlineRecognizer:
    # One segment per stream: its final is then the whole utterance's decode.
    return OnlineRecognizer(model, streaming_options("zipformer-xs"), endpoint=None)


@pytest.fixture(scope="module")
def server(model):
    config = ServerConfig(max_streams=8, max_frame_bytes=MAX_FRAME_BYTES, idle_timeout_seconds=IDLE_SECONDS)
    with ServerThread(recognizer(model), config) as running:
        yield running


def int16_bytes(path: Path) -> bytes:
    samples, rate = soundfile.read(str(path), dtype="int16")
    assert rate == 16000
    return samples.astype("<i2").tobytes()


def pieces(data: bytes, size: int = 3200) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


# -- transcripts ---------------------------------------------------------------------------------------------
def test_client_gives_the_chunked_offline_decode(server, wavs, offline, capsys):
    for utt, path in wavs.items():
        result = transcribe_file(path, server.url)
        assert result.text == offline[utt], utt
        assert len(result.finals) == 1 and result.done["segments"] == 1
        assert result.partials and result.partials[-1]["audio_seconds"] <= result.done["audio_seconds"]
    # The command line prints the same, one final segment per line.
    utt, path = next(iter(wavs.items()))
    capsys.readouterr()
    assert cli.main(["client", str(path), "--url", server.url]) == 0
    assert capsys.readouterr().out == offline[utt] + "\n"


def test_results_carry_times_and_words(server, wavs):
    path = next(iter(wavs.values()))
    final = transcribe_file(path, server.url).finals[0]
    assert final["segment"] == 0 and final["start_time"] == 0.0
    assert len(final["timestamps"]) == len(final["tokens"]) > 0
    assert final["timestamps"] == sorted(final["timestamps"])
    assert " ".join(w["word"] for w in final["words"]) == final["text"]


def test_concurrent_clients_get_their_own_transcripts(server, wavs, offline):
    before = server.stats()

    async def all_at_once():
        clips = [soundfile.read(str(p), dtype="int16")[0] for p in wavs.values()]
        return await asyncio.gather(*[stream_audio(server.url, c, 16000) for c in clips])

    results = asyncio.run(all_at_once())
    assert [r.text for r in results] == list(offline.values())
    after = server.stats()
    batched = after["mean_batch"] * after["steps"] - before["mean_batch"] * before["steps"]
    assert batched / (after["steps"] - before["steps"]) > 1.5  # streams shared decode calls


def test_float32_at_another_sample_rate(server, wavs, model):
    """float32 frames at 8 kHz: the server resamples; the result is the streaming API's on the same input."""
    path = next(iter(wavs.values()))
    clip = load_audio(path, 8000).astype(np.float32)
    expected = recognizer(model)
    stream = expected.create_stream()
    stream.accept_waveform(8000, clip)
    stream.input_finished()
    expected.decode_to_end([stream])
    result = asyncio.run(stream_audio(server.url, clip, 8000))
    assert result.text == expected.get_result(stream).text != ""


def test_endpoints_split_the_stream_into_final_segments(model, wavs):
    """With endpointing, each segment's final is what the streaming API gives when it checks for an endpoint
    after every chunk, as the server does."""
    rules = EndpointConfig(EndpointRule(False, 100.0), EndpointRule(True, 100.0), EndpointRule(False, 0.0, 1.5))
    path = max(wavs.values(), key=lambda p: p.stat().st_size)
    reference = OnlineRecognizer(model, streaming_options("zipformer-xs"), endpoint=rules)
    stream = reference.create_stream()
    stream.accept_waveform(16000, load_audio(path, 16000))
    stream.input_finished()
    expected = []
    while True:
        reference.decode_streams([stream])
        if reference.is_finished(stream):
            expected.append(reference.get_result(stream))
            break
        if reference.is_endpoint(stream):
            expected.append(reference.get_result(stream))
            reference.reset(stream)
    assert len(expected) >= 3
    served = OnlineRecognizer(model, streaming_options("zipformer-xs"), endpoint=rules)
    with ServerThread(served) as running:
        result = transcribe_file(path, running.url, realtime=False)
    assert [(f["segment"], f["text"], f["start_time"]) for f in result.finals] == [
        (r.segment, r.text, r.start_time) for r in expected
    ]
    assert [f["timestamps"] for f in result.finals] == [r.timestamps for r in expected]
    assert result.done["segments"] == len(expected)


# -- faults --------------------------------------------------------------------------------------------------
FAULTS = {
    "malformed JSON": (["{not json"], "start message is not JSON"),
    "audio before start": ([b"\x00\x01" * 100], "expected a JSON start message"),
    "text where audio is expected": ([START16, b"\x00\x00" * 800, "hello"], "expected binary audio frames"),
    "wrong sample rate": ([json.dumps({"type": "start", "sample_rate": 1_000_000})], "outside [8000, 192000]"),
    "fractional sample rate": ([json.dumps({"type": "start", "sample_rate": 16000.5})], "whole number of Hz"),
    "unknown format": ([json.dumps({"type": "start", "sample_rate": 16000, "format": "mp3"})], "format must be"),
    "half a sample": ([START16, b"\x00\x00\x00"], "is not whole samples"),
    "NaN audio": (
        [
            json.dumps({"type": "start", "sample_rate": 16000, "format": "float32"}),
            np.full(160, np.nan, "<f4").tobytes(),
        ],
        "NaN or infinite",
    ),
}


def test_faulty_clients_get_errors_while_a_good_client_stays_exact(server, wavs, offline):
    utt, path = max(wavs.items(), key=lambda item: item[1].stat().st_size)
    good_audio = soundfile.read(str(path), dtype="int16")[0]
    before = server.stats()

    async def run():
        good = asyncio.create_task(stream_audio(server.url, good_audio, 16000, realtime=True))
        outcomes = {}
        for name, (messages, _) in FAULTS.items():
            outcomes[name] = await raw_exchange(server.url, messages)
        outcomes["oversized frame"] = await raw_exchange(server.url, [START16, b"\x00" * (MAX_FRAME_BYTES + 2)])
        # A client that leaves mid-utterance, one that stalls past the idle timeout.
        outcomes["disconnect"] = await raw_exchange(server.url, [START16, *pieces(int16_bytes(path))[:5]], 0.2)
        start = time.monotonic()
        outcomes["stall"] = await raw_exchange(server.url, [START16, b"\x00\x00" * 1600], IDLE_SECONDS + 5)
        stall_seconds = time.monotonic() - start
        return await good, outcomes, stall_seconds

    good, outcomes, stall_seconds = asyncio.run(run())
    assert good.text == offline[utt]
    for name, (_, expected) in FAULTS.items():
        received, code = outcomes[name]
        assert received[-1]["type"] == "error" and expected in received[-1]["message"], (name, received)
        assert code == 1008, name
    assert outcomes["oversized frame"][1] == 1009  # websockets: message too big
    received, code = outcomes["stall"]
    assert received[-1] == {"type": "error", "message": f"idle for {IDLE_SECONDS:g} s: connection dropped"}
    assert code == 1008 and IDLE_SECONDS <= stall_seconds < IDLE_SECONDS + 3
    deadline = time.monotonic() + 5
    while server.stats()["dropped"] < before["dropped"] + 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    after = server.stats()
    assert after["dropped"] - before["dropped"] == 2  # the disconnect, and the oversized frame's closed socket
    assert after["errors"] - before["errors"] == len(FAULTS) + 1  # + the stall
    assert after["active"] == 0


def test_a_decode_failure_ends_its_streams_and_the_server_lives_on(model, wavs, offline):
    utt, path = next(iter(wavs.items()))
    failing = recognizer(model)
    decode = failing.decode_streams
    calls = []

    def fail_once(streams):
        calls.append(len(streams))
        if len(calls) == 1:
            raise RuntimeError("out of memory")
        decode(streams)

    failing.decode_streams = fail_once
    with ServerThread(failing) as running:
        received, code = asyncio.run(raw_exchange(running.url, [START16, *pieces(int16_bytes(path)), END]))
        assert received[-1] == {"type": "error", "message": "internal error while decoding"} and code == 1011
        assert transcribe_file(path, running.url).text == offline[utt]


def test_audio_past_the_length_cap_is_refused(model, wavs):
    with ServerThread(recognizer(model), ServerConfig(max_stream_seconds=1.0)) as small:
        data = int16_bytes(next(iter(wavs.values())))
        received, code = asyncio.run(raw_exchange(small.url, [START16, *pieces(data), END]))
    assert received[-1] == {"type": "error", "message": "audio longer than the server's cap of 1 s"}
    assert code == 1008


def test_streams_past_the_cap_are_refused(model, wavs, offline):
    utt, path = next(iter(wavs.items()))
    with ServerThread(recognizer(model), ServerConfig(max_streams=1)) as one:

        async def run():
            first = asyncio.create_task(stream_audio(one.url, soundfile.read(str(path), dtype="int16")[0], 16000, True))
            await asyncio.sleep(0.5)
            with pytest.raises(ServerError, match="server busy: all 1 streams are in use; try again later"):
                await stream_audio(one.url, np.zeros(1600, np.int16), 16000)
            refused = await raw_exchange(one.url, [])
            return await first, refused

        first, (received, code) = asyncio.run(run())
        assert first.text == offline[utt]
        assert code == 1013 and received[0]["type"] == "error"
        # Once the first stream is done, there is room again.
        assert transcribe_file(path, one.url).text == offline[utt]
        assert one.stats()["refused"] == 2


def test_shutdown_finishes_open_segments(model, wavs, offline):
    """A client that sent its audio but no end message still gets its final when the server stops."""
    utt, path = next(iter(wavs.items()))
    running = ServerThread(recognizer(model)).__enter__()

    async def run():
        task = asyncio.create_task(raw_exchange(running.url, [START16, *pieces(int16_bytes(path))], 30))
        await asyncio.sleep(1.0)
        await asyncio.to_thread(running.__exit__, None, None, None)
        return await task

    received, code = asyncio.run(run())
    finals = [m for m in received if m["type"] == "final"]
    assert [f["text"] for f in finals] == [offline[utt]]
    assert received[-1]["type"] == "done" and code == 1000


def test_http_serves_the_page_and_stats(server):
    http = server.url.replace("ws://", "http://")
    page = urllib.request.urlopen(http + "/", timeout=10).read().decode()
    assert '<script src="app.js">' in page
    for name in ("app.js", "recorder-worklet.js", "style.css"):
        body = urllib.request.urlopen(f"{http}/{name}", timeout=10).read()
        assert body == (REPO / "asr/streaming/web" / name).read_bytes()
    stats = json.loads(urllib.request.urlopen(http + "/stats", timeout=10).read())
    assert stats["chunk_seconds"] == pytest.approx(0.32) and "rtf" in stats
    for bad in ("/../pyproject.toml", "/nothing.js", "/.hidden"):
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(http + bad, timeout=10)
    # Nothing on the page comes from another host.
    for name in ("index.html", "app.js"):
        assert not re.search(r"https?://", (REPO / "asr/streaming/web" / name).read_text())


# -- the command line -------------------------------------------------------------------------------------------
def save_checkpoint(model, path: Path) -> Path:
    lang = Path(model.tokenizer.source).parent
    return save_model(path, model, extra={"tokenizer": {"bpe.model": (lang / "bpe.model").read_bytes()}})


def start_serve(args: list[str]) -> tuple[subprocess.Popen, str]:
    """`asr serve ARGS --port 0` in a subprocess, and its websocket URL."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "asr", "serve", *args, "--host", "127.0.0.1", "--port", "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 60
    line = ""
    while time.monotonic() < deadline and process.poll() is None:
        line = process.stdout.readline()
        if line.startswith("serving on"):
            port = re.search(r":(\d+)/", line).group(1)
            return process, f"ws://127.0.0.1:{port}"
    process.kill()
    raise AssertionError(f"asr serve did not start: {line}{process.stderr.read()}")


def test_asr_serve_and_asr_client(model, wavs, offline, tmp_path, capsys):
    checkpoint = save_checkpoint(model, tmp_path / "model.pt")
    args = ["--checkpoint", str(checkpoint), "--chunk-size", "16", "--left-context-frames", "64", "--no-endpoint"]
    process, url = start_serve(args)
    try:
        capsys.readouterr()
        for utt, path in list(wavs.items())[:2]:
            assert cli.main(["client", str(path), "--url", url]) == 0
            assert capsys.readouterr().out == offline[utt] + "\n"
    finally:
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert "event=connect" in stderr and "event=stats" in stderr and "rtf=" in stderr


def test_cli_errors_name_the_problem(wavs, tmp_path, capsys):
    with pytest.raises(SystemExit, match="missing.wav"):
        cli.main(["client", str(tmp_path / "missing.wav"), "--url", "ws://127.0.0.1:9"])
    with pytest.raises(SystemExit):
        cli.main(["client", "x.wav", "--url", "http://127.0.0.1:9"])
    assert "--url must start with ws://" in capsys.readouterr().err
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        url = f"ws://127.0.0.1:{probe.getsockname()[1]}"
    assert cli.main(["client", str(next(iter(wavs.values()))), "--url", url]) == 1
    assert capsys.readouterr().err.startswith(f"asr client: {url}: ")


# -- the page -----------------------------------------------------------------------------------------------
PAGE_RESAMPLER = """
const fs = require("fs");
const src = fs.readFileSync(process.argv[1], "utf8");
const TARGET_RATE = 16000;
const code = src.slice(src.indexOf("class Resampler"), src.indexOf("// One recognition session"));
eval(code + ";globalThis.R = Resampler;");
const input = JSON.parse(fs.readFileSync(0, "utf8"));
const r = new R(input.rate);
const out = [];
let pos = 0;
for (const n of input.pieces) { out.push(...r.push(Float32Array.from(input.x.slice(pos, pos + n)))); pos += n; }
out.push(...r.finish());
process.stdout.write(JSON.stringify(out));
"""


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_page_resampler_is_the_offline_resampler(rate):
    """The page's 16 kHz resampler, fed blocks of random sizes, gives the toolkit's resampling of the whole."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    rng = np.random.default_rng(rate)
    x = (0.1 * rng.standard_normal(rate // 3)).astype(np.float32)
    sizes = rng.integers(1, 1000, size=x.size).tolist()
    cuts = np.cumsum(sizes)
    pieces_ = sizes[: int(np.searchsorted(cuts, x.size)) + 1]
    run = subprocess.run(
        [node, "-e", PAGE_RESAMPLER, str(REPO / "asr/streaming/web/app.js")],
        input=json.dumps({"rate": rate, "x": x.tolist(), "pieces": pieces_}),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    page = np.array(json.loads(run.stdout), dtype=np.float32)
    expected = resample(x, rate, 16000)
    assert page.shape == expected.shape
    np.testing.assert_allclose(page, expected, atol=1e-6)


@pytest.mark.slow
def test_browser_page_transcribes_the_fake_microphone(model, wavs, tmp_path):
    """Chromium's fake microphone plays U.wav into the page; the final text shown is the offline chunked decode
    of U.wav by the same model.

    U.wav is a synth utterance at 44.1 kHz (the headless browser's rate, so the page's own resampler does the
    work), starting with its first non-zero sample. The fake device plays it once (``%noloop``) after half a
    second of zeros, since a capture's first buffers may be lost before the page's audio graph runs: the page
    skips leading exact zeros, and stops after U.wav's length at 16 kHz (``?seconds=``).
    """
    browser = shutil.which("chromium")
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    playwright = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
    )
    clip = resample(load_audio(next(iter(wavs.values())), 16000), 16000, 44100)
    clip = clip[np.flatnonzero(clip)[0] :]
    utterance = tmp_path / "U.wav"
    soundfile.write(utterance, clip, 44100, subtype="FLOAT")
    played = tmp_path / "played.wav"
    soundfile.write(played, np.concatenate([np.zeros(22050, np.float32), clip]), 44100, subtype="FLOAT")
    offline = Recognizer(model, streaming_options("zipformer-xs")).transcribe(load_audio(utterance, 16000), 16000)
    assert len(offline.token_ids) >= 5
    seconds = -(-clip.size * 160 // 441) / 16000  # resample_poly's output length
    with ServerThread(recognizer(model)) as running:
        http = running.url.replace("ws://", "http://")
        with playwright.sync_playwright() as p:
            chrome = p.chromium.launch(
                executable_path=browser,
                headless=True,
                args=[
                    "--use-fake-ui-for-media-stream",
                    "--use-fake-device-for-media-stream",
                    f"--use-file-for-fake-audio-capture={played}%noloop",
                ],
            )
            try:
                page = chrome.new_page(viewport={"width": 900, "height": 600})
                page.goto(f"{http}/?seconds={seconds:.6f}")
                page.click("#start")
                page.wait_for_function("document.body.dataset.state === 'done'", timeout=60_000)
                status = page.inner_text("#status")
                shown = page.text_content("#finals .text")  # as sent: HTML rendering collapses spaces
                screenshot = os.environ.get("ASR_SERVE_SCREENSHOT")  # where to keep a picture of the page
                if screenshot:
                    page.screenshot(path=screenshot)
                # The upload box streams a chosen file the same way.
                page.evaluate("document.body.dataset.state = 'uploading'")
                page.set_input_files("#file", str(utterance))
                page.wait_for_function("document.body.dataset.state === 'done'", timeout=60_000)
                uploaded = page.text_content("#finals .text")
            finally:
                chrome.close()
    assert shown == offline.text, status
    assert uploaded == offline.text
