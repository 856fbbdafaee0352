"""sherpa-onnx, the deployment runtime, as a client of an ``asr export onnx`` directory.

sherpa-onnx ends the whole process (status 255 or a segfault) on a graph or metadata it cannot use, and it
bundles its own onnxruntime, so :func:`sherpa_decode` runs it in a child process: this file as a script,
which writes one JSON record per wav (text, token symbols, timestamps in seconds) and, for a stream, the
feature frames sherpa computed (``frames_<i>.npy`` in the output dir) and the number of encoder calls.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def sherpa_decode(
    export_dir: Path, wavs: list[Path], out_dir: Path, kind: str, int8: bool = False, tail_seconds: float = 0.3
) -> list[dict]:
    """Decode ``wavs`` with sherpa-onnx (greedy search) on ``export_dir``: ``kind`` "online" (a streaming
    transducer export), "offline" (an offline transducer export) or "ctc". A stream gets ``tail_seconds`` of
    zero samples after each file (what sherpa's examples do so that the last words come out)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    request = {
        "export_dir": str(export_dir),
        "wavs": [str(w) for w in wavs],
        "out_dir": str(out_dir),
        "kind": kind,
        "int8": int8,
        "tail_seconds": tail_seconds,
    }
    done = subprocess.run([sys.executable, __file__, json.dumps(request)], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"sherpa-onnx exited with status {done.returncode}:\n{done.stderr[-3000:]}")
    return json.loads((out_dir / "results.json").read_text())


def _main(request: dict) -> None:
    import numpy as np
    import sherpa_onnx
    import soundfile

    d = Path(request["export_dir"])
    suffix = ".int8.onnx" if request["int8"] else ".onnx"
    common = dict(tokens=str(d / "tokens.txt"), num_threads=1, sample_rate=16000, feature_dim=80)
    streaming = request["kind"] == "online"
    if request["kind"] == "ctc":
        recognizer = sherpa_onnx.OfflineRecognizer.from_zipformer_ctc(model=str(d / f"model{suffix}"), **common)
    else:
        graphs = {name: str(d / f"{name}{suffix}") for name in ("encoder", "decoder", "joiner")}
        recognizer_class = sherpa_onnx.OnlineRecognizer if streaming else sherpa_onnx.OfflineRecognizer
        recognizer = recognizer_class.from_transducer(**graphs, **common, decoding_method="greedy_search")
    results = []
    for i, wav in enumerate(request["wavs"]):
        samples, rate = soundfile.read(wav, dtype="float32")
        if not streaming:
            stream = recognizer.create_stream()
            stream.accept_waveform(rate, samples)
            recognizer.decode_stream(stream)
            result = stream.result
            results.append({"text": result.text, "tokens": list(result.tokens), "timestamps": list(result.timestamps)})
            continue
        tail = np.zeros(int(request["tail_seconds"] * rate), dtype=np.float32)
        stream = recognizer.create_stream()
        stream.accept_waveform(rate, np.concatenate([samples, tail]))
        stream.input_finished()
        # kaldi frames with snip_edges=False: one per 10 ms hop, rounded; read before decoding discards them.
        num_frames = (len(samples) + len(tail) + 80) // 160
        frames = np.asarray(stream.get_frames(0, num_frames), dtype=np.float32).reshape(num_frames, -1)
        np.save(Path(request["out_dir"]) / f"frames_{i}.npy", frames)
        calls = 0
        while recognizer.is_ready(stream):
            recognizer.decode_stream(stream)
            calls += 1
        result = recognizer.get_result_all(stream)
        results.append(
            {
                "text": result.text,
                "tokens": list(result.tokens),
                "timestamps": list(result.timestamps),
                "encoder_calls": calls,
            }
        )
    (Path(request["out_dir"]) / "results.json").write_text(json.dumps(results))


if __name__ == "__main__":
    _main(json.loads(sys.argv[1]))
