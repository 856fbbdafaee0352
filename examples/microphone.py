"""Live transcription from the default microphone (needs `pip install sounddevice`).

python examples/microphone.py --checkpoint exp/causal
"""

import argparse
import queue

import asr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a causal (streaming) model")
    args = parser.parse_args()
    try:
        import sounddevice
    except ImportError:
        raise SystemExit("this example needs sounddevice: pip install sounddevice") from None
    recognizer = asr.OnlineRecognizer.from_checkpoint(args.checkpoint)
    stream = recognizer.create_stream()
    pieces: queue.Queue = queue.Queue()
    sample_rate = 16000
    print("listening; Ctrl-C to stop")
    with sounddevice.InputStream(
        samplerate=sample_rate,
        channels=1,
        dtype="float32",
        blocksize=sample_rate // 10,
        callback=lambda data, frames, time, status: pieces.put(data[:, 0].copy()),
    ):
        try:
            last = ""
            while True:
                stream.accept_waveform(sample_rate, pieces.get())
                while recognizer.is_ready(stream):
                    recognizer.decode_streams([stream])
                text = recognizer.get_result(stream).text
                if text != last:
                    print(f"\r{text}", end="", flush=True)
                    last = text
                if recognizer.is_endpoint(stream):
                    if last:
                        print()
                    recognizer.reset(stream)
                    last = ""
        except KeyboardInterrupt:
            print()


if __name__ == "__main__":
    main()
