"""Transcribe audio files with an offline recognizer, printing each word with its start and end time.

python examples/transcribe_file.py --checkpoint exp/synth speech.wav [more.wav ...]
"""

import argparse

import asr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a checkpoint, model file or experiment dir")
    parser.add_argument("--method", default="modified_beam_search")
    parser.add_argument("audio", nargs="+")
    args = parser.parse_args()
    recognizer = asr.Recognizer.from_checkpoint(args.checkpoint, method=args.method)
    for path, result in zip(args.audio, recognizer.transcribe_batch(args.audio)):
        print(f"{path}: {result.text}")
        for word in result.words:
            print(f"  {word.start:7.2f} {word.end:7.2f}  {word.word}")


if __name__ == "__main__":
    main()
