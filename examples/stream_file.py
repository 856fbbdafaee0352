"""Stream a wav file through a causal model in 100 ms pieces, printing the partial result as it changes and
a line per endpoint segment.

    python examples/stream_file.py --checkpoint exp/causal speech.wav [--chunk-size 16]
"""

import argparse

import soundfile

import asr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a causal (streaming) model")
    parser.add_argument("--chunk-size", type=int, default=None, help="encoder frames per chunk (default: 320 ms)")
    parser.add_argument("wav")
    args = parser.parse_args()
    recognizer = asr.OnlineRecognizer.from_checkpoint(args.checkpoint, chunk_size=args.chunk_size)
    samples, sample_rate = soundfile.read(args.wav, dtype="float32", always_2d=True)
    samples = samples.mean(axis=1)
    stream = recognizer.create_stream()
    piece = sample_rate // 10
    last = ""
    for start in range(0, len(samples), piece):
        stream.accept_waveform(sample_rate, samples[start : start + piece])
        while recognizer.is_ready(stream):
            recognizer.decode_streams([stream])
        text = recognizer.get_result(stream).text
        if text != last:
            print(f"partial: {text}", flush=True)
            last = text
        if recognizer.is_endpoint(stream):
            result = recognizer.get_result(stream)
            if result.text:
                print(f"segment {result.segment}: {result.text}", flush=True)
            recognizer.reset(stream)
            last = ""
    stream.input_finished()
    recognizer.decode_to_end([stream])
    result = recognizer.get_result(stream)
    print(f"segment {result.segment}: {result.text}")


if __name__ == "__main__":
    main()
