"""The ONNX export against the sherpa-onnx runtime: do sherpa's decodes of ``asr export onnx`` match ours?

The checkpoint is exported twice with ``--int8`` into a temporary dir: offline (full context) and streaming
(``--chunk-size``, ``--left-context-frames``). Every cut's recording audio (stored features are not used) is
decoded by greedy search four ways of ours and sherpa's:

* ours, full context: ``Recognizer(model, DecodingOptions(method="greedy"))``;
* ours, chunked: the same with ``chunk_size`` and ``left_context_frames``;
* sherpa-onnx ``OfflineRecognizer.from_transducer`` on the offline export, fp32 and int8;
* sherpa-onnx ``OnlineRecognizer.from_transducer`` on the streaming export, fp32 and int8: the whole file
  and ``--tail-seconds`` of zeros are fed, then the input is closed and the stream decoded until not ready.

Pairs reported: sherpa offline fp32 vs ours full context, sherpa streaming fp32 vs ours chunked, and int8 vs
fp32 of each sherpa decode: the share of utterances with identical text, each side's WER against the cuts'
references, B - A in WER points, and the export's fp32 and int8 sizes. Known differences that are not export
faults: sherpa's greedy search treats ``<unk>`` as blank (it neither outputs it nor feeds it to the decoder)
where ours emits it (shown as ``⁇``), and sherpa's stream decodes the zero tail, so a model that emits tokens
on silence can add some at the end (the counts of our outputs holding ``<unk>`` are printed). sherpa-onnx
ends its process on a graph it cannot use, so each of its decodes runs in a child process (this script with
``--sherpa-worker``); a failed one is reported and the script exits 1. Without ``--checkpoint`` and
``--cuts`` it says so and exits 0.

    .venv/bin/python tools/bench/sherpa_parity.py --checkpoint EXP --cuts data/synth/fbank/synth_cuts_test.jsonl.gz \\
        --chunk-size 16 --left-context-frames 64 [--limit N] [--json tools/bench/results/sherpa_parity.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from asr.inference import DecodingOptions
    from asr.models import AsrModel

SAMPLE_RATE = 16000


def normalise(text: str) -> str:
    """Words separated by single spaces (sherpa's BPE text starts with a space)."""
    return " ".join(text.split())


# ---- sherpa-onnx, in a child process ----------------------------------------------------------------------------
def sherpa_worker(request: dict) -> None:
    """Decode ``request["wavs"]`` (``[id, path]`` pairs) with sherpa-onnx; ``{id: text}`` goes to ``request["out"]``."""
    import numpy as np
    import sherpa_onnx
    import soundfile

    export_dir = Path(request["export_dir"])
    suffix = ".int8.onnx" if request["int8"] else ".onnx"
    graphs = {name: str(export_dir / f"{name}{suffix}") for name in ("encoder", "decoder", "joiner")}
    common = dict(
        tokens=str(export_dir / "tokens.txt"),
        num_threads=request["threads"],
        sample_rate=SAMPLE_RATE,
        feature_dim=80,
        decoding_method="greedy_search",
    )
    streaming = request["kind"] == "online"
    recognizer_class = sherpa_onnx.OnlineRecognizer if streaming else sherpa_onnx.OfflineRecognizer
    recognizer = recognizer_class.from_transducer(**graphs, **common)
    texts = {}
    for utt_id, wav in request["wavs"]:
        samples, rate = soundfile.read(wav, dtype="float32")
        stream = recognizer.create_stream()
        if not streaming:
            stream.accept_waveform(rate, samples)
            recognizer.decode_stream(stream)
            texts[utt_id] = normalise(stream.result.text)
            continue
        # The zero tail lets the last chunk's look-ahead fill, as sherpa's own examples do.
        tail = np.zeros(int(request["tail_seconds"] * rate), dtype=np.float32)
        stream.accept_waveform(rate, np.concatenate([samples, tail]))
        stream.input_finished()
        while recognizer.is_ready(stream):
            recognizer.decode_stream(stream)
        texts[utt_id] = normalise(recognizer.get_result_all(stream).text)
    Path(request["out"]).write_text(json.dumps(texts))


def sherpa_decode(
    export_dir: Path, wavs: list[tuple[str, Path]], kind: str, int8: bool, tail_seconds: float, threads: int
) -> tuple[dict[str, str] | None, str | None, float]:
    """``({id: text}, None, seconds)``, or ``(None, error, seconds)`` when the sherpa process failed."""
    out = export_dir / f"sherpa_{kind}_{'int8' if int8 else 'fp32'}.json"
    request = {
        "export_dir": str(export_dir),
        "wavs": [[utt_id, str(path)] for utt_id, path in wavs],
        "kind": kind,
        "int8": int8,
        "tail_seconds": tail_seconds,
        "threads": threads,
        "out": str(out),
    }
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, __file__, "--sherpa-worker", json.dumps(request)], capture_output=True, text=True
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        return None, f"sherpa-onnx exited with status {done.returncode}: {done.stderr.strip()[-2000:]}", seconds
    return json.loads(out.read_text()), None, seconds


# ---- ours --------------------------------------------------------------------------------------------------------
def export(checkpoint: str, out_dir: Path, streaming_args: list[str]) -> None:
    """``asr export onnx --int8`` into ``out_dir``; exits with its message when the export fails."""
    command = [sys.executable, "-m", "asr", "export", "onnx", "--checkpoint", checkpoint, "--out-dir", str(out_dir)]
    done = subprocess.run([*command, "--int8", *streaming_args], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"sherpa_parity.py: {' '.join(command[2:])} failed:\n{done.stderr.strip()[-3000:]}")


def export_sizes(export_dir: Path) -> dict[str, int]:
    """Bytes of the fp32 graphs and of the int8 graphs."""
    onnx_files = list(export_dir.glob("*.onnx"))
    int8 = sum(p.stat().st_size for p in onnx_files if p.name.endswith(".int8.onnx"))
    return {"fp32_bytes": sum(p.stat().st_size for p in onnx_files) - int8, "int8_bytes": int8}


def load_audio_cuts(
    cuts_path: str, limit: int | None, wav_dir: Path
) -> tuple[list[tuple[str, Path]], dict[str, str], float]:
    """Each cut's recording audio at 16 kHz as a float wav in ``wav_dir`` (``[(id, path)]``), its reference
    text (``{id: text}``) and the total audio seconds."""
    import soundfile

    from asr.data.manifests import ManifestError, load_cuts

    try:
        cuts = load_cuts(cuts_path)
    except ManifestError as error:
        sys.exit(f"sherpa_parity.py: --cuts: {error}")
    wavs, refs, seconds = [], {}, 0.0
    for i, cut in enumerate(cuts):
        if limit is not None and i >= limit:
            break
        if not cut.has_recording:
            sys.exit(f"sherpa_parity.py: --cuts {cuts_path}: cut {cut.id} has no recording (audio is needed)")
        cut = cut.resample(SAMPLE_RATE) if cut.sampling_rate != SAMPLE_RATE else cut
        path = wav_dir / f"{i:06d}.wav"
        # float samples, so that sherpa reads exactly what we decode
        samples = cut.load_audio()[0]
        soundfile.write(path, samples, SAMPLE_RATE, subtype="FLOAT")
        seconds += len(samples) / SAMPLE_RATE
        wavs.append((cut.id, path))
        refs[cut.id] = normalise(" ".join(s.text for s in cut.supervisions if s.text))
    return wavs, refs, seconds


def ours_decode(
    model: AsrModel, options: DecodingOptions, wavs: list[tuple[str, Path]]
) -> tuple[dict[str, str], float]:
    """``{id: text}`` of the library's Recognizer (a too-short utterance decodes to ""), and the seconds taken."""
    import soundfile

    from asr.inference import Recognizer
    from asr.inference.offline import Utterance

    recognizer = Recognizer(model, options)

    def utterances():
        for utt_id, path in wavs:
            samples, rate = soundfile.read(path, dtype="float32")
            yield Utterance(utt_id, recognizer.features(samples, rate))

    started = time.perf_counter()
    errors: list[str] = []
    result = recognizer.decode(utterances(), errors)
    for message in errors:
        print(f"warning: {message}", file=sys.stderr)
    return {utt_id: normalise(result.hypotheses.get(utt_id, "")) for utt_id, _ in wavs}, time.perf_counter() - started


# ---- report ------------------------------------------------------------------------------------------------------
def count_unk(texts: dict[str, str]) -> int:
    """Utterances whose text holds an ``<unk>`` (sentencepiece writes it as ``⁇``)."""
    return sum("⁇" in text or "<unk>" in text for text in texts.values())


def compare(name: str, a: str, b: str, decodes: dict, refs: dict[str, str]) -> dict:
    """Identical-text share and WERs of decode ``b`` against decode ``a``."""
    from asr.wer import compute_wer

    row = {"pair": name, "a": a, "b": b}
    missing = [side for side in (a, b) if decodes[side].get("texts") is None]
    if missing:
        row["error"] = "; ".join(f"{side}: {decodes[side]['error']}" for side in missing)
        return row
    hyps_a, hyps_b = decodes[a]["texts"], decodes[b]["texts"]
    wer_a = compute_wer(refs, hyps_a).wer
    wer_b = compute_wer(refs, hyps_b).wer
    same = sum(hyps_a[i] == hyps_b[i] for i in refs)
    row.update(
        identical=same / len(refs),
        identical_count=same,
        utterances=len(refs),
        wer_a=wer_a,
        wer_b=wer_b,
        wer_diff_points=100 * (wer_b - wer_a),
        differing=[{"id": i, "a": hyps_a[i], "b": hyps_b[i]} for i in refs if hyps_a[i] != hyps_b[i]],
    )
    return row


def print_table(rows: list[dict], sizes: dict[str, dict[str, int]]) -> None:
    header = f"{'B vs A':<48} {'identical':>13} {'WER A %':>8} {'WER B %':>8} {'B-A pts':>8}"
    print(header)
    print("-" * len(header))
    for row in rows:
        pair = f"{row['b']} vs {row['a']}"
        if "error" in row:
            print(f"{pair:<48} failed: {row['error'].splitlines()[-1][:160]}")
            continue
        identical = f"{100 * row['identical']:.1f}% ({row['identical_count']}/{row['utterances']})"
        print(
            f"{pair:<48} {identical:>13} {100 * row['wer_a']:>8.2f} {100 * row['wer_b']:>8.2f}"
            f" {row['wer_diff_points']:>+8.2f}"
        )
    print()
    for name, size in sizes.items():
        print(
            f"{name} export: fp32 {size['fp32_bytes'] / 1e6:.2f} MB, int8 {size['int8_bytes'] / 1e6:.2f} MB"
            f" ({size['int8_bytes'] / size['fp32_bytes']:.2f}x)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="a causal transducer: checkpoint, model file or experiment dir")
    parser.add_argument("--cuts", help="a CutSet whose recordings and texts are decoded and scored")
    parser.add_argument("--chunk-size", type=int, default=16, help="chunk in 50 Hz frames (streaming export, ours)")
    parser.add_argument("--left-context-frames", type=int, default=64, help="left context in 50 Hz frames")
    parser.add_argument("--limit", type=int, default=None, help="only the first N cuts")
    parser.add_argument("--tail-seconds", type=float, default=0.3, help="zeros fed to a sherpa stream after each file")
    parser.add_argument("--threads", type=int, default=1, help="torch and sherpa-onnx threads")
    parser.add_argument("--json", type=Path, default=Path("tools/bench/results/sherpa_parity.json"))
    parser.add_argument("--sherpa-worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sherpa_worker is not None:
        sherpa_worker(json.loads(args.sherpa_worker))
        return
    if args.checkpoint is None and args.cuts is None:
        # `make bench` runs every script without arguments; this one needs a trained model.
        print("sherpa_parity.py: nothing to do without --checkpoint (a trained causal transducer) and --cuts")
        return
    if args.checkpoint is None or args.cuts is None:
        parser.error("--checkpoint and --cuts go together")
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit must be at least 1, got {args.limit}")
    if args.tail_seconds < 0:
        parser.error(f"--tail-seconds must be non-negative, got {args.tail_seconds}")

    import torch

    from asr.checkpoint import load_model
    from asr.inference import DecodingOptions

    torch.set_num_threads(args.threads)
    try:
        model = load_model(args.checkpoint, "cpu")
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"sherpa_parity.py: --checkpoint: {error}")
    if model.tokenizer is None:
        sys.exit(f"sherpa_parity.py: --checkpoint {args.checkpoint} holds no tokenizer")
    full = DecodingOptions(method="greedy")
    chunked = DecodingOptions(method="greedy", chunk_size=args.chunk_size, left_context_frames=args.left_context_frames)

    with tempfile.TemporaryDirectory(prefix="sherpa_onnx_bench_") as tmp:
        tmp = Path(tmp)
        (tmp / "wav").mkdir()
        wavs, refs, audio_seconds = load_audio_cuts(args.cuts, args.limit, tmp / "wav")
        print(f"{len(wavs)} utterances, {audio_seconds:.1f} s of audio")
        offline_dir, streaming_dir = tmp / "offline", tmp / "streaming"
        export(args.checkpoint, offline_dir, [])
        streaming_args = ["--streaming", "--chunk-size", str(args.chunk_size)]
        export(
            args.checkpoint, streaming_dir, [*streaming_args, "--left-context-frames", str(args.left_context_frames)]
        )
        sizes = {"offline": export_sizes(offline_dir), "streaming": export_sizes(streaming_dir)}

        decodes: dict[str, dict] = {}
        for name, options in (("ours full context", full), ("ours chunked", chunked)):
            texts, seconds = ours_decode(model, options, wavs)
            decodes[name] = {"texts": texts, "seconds": seconds}
        for kind, export_dir in (("offline", offline_dir), ("streaming", streaming_dir)):
            for int8 in (False, True):
                name = f"sherpa {kind} {'int8' if int8 else 'fp32'}"
                sherpa_kind = "online" if kind == "streaming" else "offline"
                texts, error, seconds = sherpa_decode(
                    export_dir, wavs, sherpa_kind, int8, args.tail_seconds, args.threads
                )
                decodes[name] = {"texts": texts, "error": error, "seconds": seconds}

    rows = [
        compare("offline fp32 vs torch", "ours full context", "sherpa offline fp32", decodes, refs),
        compare("streaming fp32 vs torch", "ours chunked", "sherpa streaming fp32", decodes, refs),
        compare("offline int8 vs fp32", "sherpa offline fp32", "sherpa offline int8", decodes, refs),
        compare("streaming int8 vs fp32", "sherpa streaming fp32", "sherpa streaming int8", decodes, refs),
    ]
    print(
        f"greedy search; streaming: chunk {args.chunk_size}, left context {args.left_context_frames} (50 Hz frames),"
        f" sherpa tail {args.tail_seconds} s"
    )
    print_table(rows, sizes)
    unk = {name: count_unk(decodes[name]["texts"]) for name in ("ours full context", "ours chunked")}
    print(", ".join(f"{name}: <unk> in {count} of {len(wavs)}" for name, count in unk.items()))
    result = {
        "checkpoint": args.checkpoint,
        "cuts": args.cuts,
        "utterances": len(wavs),
        "audio_seconds": audio_seconds,
        "chunk_size": args.chunk_size,
        "left_context_frames": args.left_context_frames,
        "tail_seconds": args.tail_seconds,
        "threads": args.threads,
        "machine": platform.processor() or platform.machine(),
        "export_sizes": sizes,
        "decode_seconds": {name: round(d["seconds"], 3) for name, d in decodes.items()},
        "pairs": rows,
        "ours_unk_utterances": unk,
        "references": refs,
        "hypotheses": {name: d["texts"] for name, d in decodes.items()},
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    if any("error" in row for row in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
