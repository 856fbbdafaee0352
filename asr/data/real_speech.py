"""Real human English speech from Debian packages, for evaluation only (never for training).

The Asterisk core prompts (:func:`asterisk_prompts_cuts`): one professional female speaker
(Allison Smith), US English, read telephone-system prompts ("please enter your password followed
by the pound key"), recorded clean. Debian ships them as G.722 (16 kHz wideband) in
``asterisk-core-sounds-en-g722`` and their transcripts in ``asterisk-core-sounds-en``
(``core-sounds-en.txt.gz``); license CC-BY-SA-3.0 (recorded by Allison Smith, funded by Digium, Inc.).

:func:`asterisk_prompts_cuts` decodes the prompts with ffmpeg to 16 kHz 16-bit wavs and writes
a lhotse CutSet of those whose transcript is plain speech: bracketed non-speech ("[beep]",
"(1 second of silence)"), numbers of more than one digit (how they are read is ambiguous) and
symbols are left out; single digits become words ("press 1" -> "press one"), the rest is
lower-cased with punctuation removed, as the corpus's transcripts are. Of the 569 prompts of
version 1.6.1, 535 have audio and are kept: 22.5 minutes, 3,023 words; 228 are single words.

The pocketsphinx test recordings (:func:`pocketsphinx_test_cuts`, Debian package
``pocketsphinx-testdata``, BSD-2-Clause, Carnegie Mellon University): 5 sentences of a LibriVox
reading of Sense and Sensibility and 5 spoken card names ("eight of spades four of clubs"), 16 kHz,
34 seconds in all; other voices than the prompts', too few for more than a sanity check.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lhotse import CutSet

ASTERISK_SOUNDS_DIR = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
ASTERISK_TRANSCRIPTS = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
ASTERISK_PACKAGES = "asterisk-core-sounds-en-g722 asterisk-core-sounds-en"
ASTERISK_LICENSE = "CC-BY-SA-3.0: Asterisk core sounds, recorded by Allison Smith, funded by Digium, Inc."
SPEAKER = "asterisk-allison"
POCKETSPHINX_TEST_DIR = Path("/usr/share/pocketsphinx/test/data")
# (folder, file ids, transcription file, speaker) of each transcribed set of pocketsphinx-testdata.
POCKETSPHINX_SETS = (
    ("librivox", "fileids", "transcription", "pocketsphinx-librivox"),
    ("cards", "cards.fileids", "cards.transcription", "pocketsphinx-cards"),
)
POCKETSPHINX_LICENSE = "BSD-2-Clause: pocketsphinx test data, Carnegie Mellon University"
SAMPLE_RATE = 16000

_DIGITS = "zero one two three four five six seven eight nine".split()
_WORD_RE = re.compile(r"[a-z]+(?:'[a-z]+)*")


class RealSpeechMissingError(RuntimeError):
    """The package holding the speech (or the program decoding it) is not installed."""


def normalize_prompt(text: str) -> str | None:
    """A prompt's transcript as the corpus writes text (lower-case words, apostrophes kept), or
    ``None`` when it is not plain speech or cannot be spelled without guessing."""
    if re.search(r"[\[\]<>()*#@%$&+=/\\|~^_]", text) or re.search(r"\d\d|\d[.,]\d", text):
        return None
    text = re.sub(r"\d", lambda m: f" {_DIGITS[int(m.group())]} ", text.lower())
    text = text.replace("\u2019", "'")
    words = re.sub(r"[.,;:!?\"-]", " ", text).split()
    words = [w.strip("'") for w in words]
    words = [w for w in words if w]
    if not words or not all(_WORD_RE.fullmatch(w) for w in words):
        return None
    return " ".join(words)


def read_asterisk_transcripts(path: Path = ASTERISK_TRANSCRIPTS) -> Iterator[tuple[str, str]]:
    """``(prompt name, transcript as written)`` of each ``name: text`` line of ``core-sounds-en.txt``
    (plain or gzipped); names may hold a folder (``digits/1``)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith(";") or ":" not in line:
                continue
            name, text = line.split(":", 1)
            if name.strip() and text.strip():
                yield name.strip(), text.strip()


def _decode_g722(source: Path, dest: Path) -> None:
    """G.722 file -> 16 kHz mono 16-bit wav, atomically."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-f", "g722", "-i", str(source)]
    cmd += ["-ac", "1", "-ar", str(SAMPLE_RATE), "-c:a", "pcm_s16le", "-f", "wav", str(tmp)]
    result = subprocess.run(cmd, capture_output=True)
    if result.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"ffmpeg could not decode {source}: {result.stderr.decode(errors='replace').strip()}")
    os.replace(tmp, dest)


def _cut(utt_id: str, wav: Path, text: str, speaker: str, custom: dict):
    """A lhotse cut of the whole file ``wav`` with one English supervision."""
    import soundfile
    from lhotse import AudioSource, MonoCut, Recording, SupervisionSegment

    info = soundfile.info(str(wav))
    duration = info.frames / info.samplerate
    recording = Recording(
        id=utt_id,
        sources=[AudioSource(type="file", channels=[0], source=str(wav))],
        sampling_rate=info.samplerate,
        num_samples=info.frames,
        duration=duration,
    )
    supervision = SupervisionSegment(
        id=utt_id,
        recording_id=utt_id,
        start=0.0,
        duration=duration,
        channel=0,
        text=text,
        language="English",
        speaker=speaker,
        custom=custom,
    )
    return MonoCut(utt_id, 0.0, duration, 0, recording=recording, supervisions=[supervision])


def asterisk_prompts_cuts(
    out_dir: str | Path,
    sounds_dir: Path = ASTERISK_SOUNDS_DIR,
    transcripts: Path = ASTERISK_TRANSCRIPTS,
) -> CutSet:
    """Decode the Asterisk prompts into ``out_dir/audio/`` and write ``out_dir/asterisk_cuts.jsonl.gz``.

    One cut per prompt whose ``.g722`` file exists and whose transcript :func:`normalize_prompt`
    keeps; speaker :data:`SPEAKER`; the supervision's ``custom`` holds the original transcript and
    the license. Wavs already decoded are kept (a rerun only finishes). Raises
    :class:`RealSpeechMissingError` naming the Debian package when a part is not installed.
    """
    from lhotse import CutSet

    from asr.data.manifests import save_manifest

    missing = []
    if not transcripts.is_file():
        missing.append(f"transcripts {transcripts} (Debian package asterisk-core-sounds-en)")
    if not sounds_dir.is_dir() or not any(sounds_dir.glob("*.g722")):
        missing.append(f"G.722 prompts in {sounds_dir} (Debian package asterisk-core-sounds-en-g722)")
    if shutil.which("ffmpeg") is None:
        missing.append("ffmpeg to decode G.722 (Debian package ffmpeg)")
    if missing:
        raise RealSpeechMissingError(
            "the real-speech set needs: "
            + "; ".join(missing)
            + f". Install: apt-get install {ASTERISK_PACKAGES} ffmpeg"
        )
    out_dir = Path(out_dir)
    cuts = []
    for name, written in read_asterisk_transcripts(transcripts):
        source = sounds_dir / f"{name}.g722"
        text = normalize_prompt(written)
        if text is None or not source.is_file():
            continue
        utt_id = f"{SPEAKER}-{name.replace('/', '-')}"
        wav = (out_dir / "audio" / f"{utt_id}.wav").resolve()
        if not wav.is_file():
            _decode_g722(source, wav)
        cuts.append(_cut(utt_id, wav, text, SPEAKER, {"original_text": written, "license": ASTERISK_LICENSE}))
    cut_set = CutSet.from_cuts(cuts)
    save_manifest(cut_set, out_dir / "asterisk_cuts.jsonl.gz")
    return cut_set


def read_sphinx_transcription(path: Path) -> dict[str, str]:
    """``{file id: text}`` of a sphinx transcription file (``<s> words </s> (file_id)`` lines)."""
    texts = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        match = re.fullmatch(r"\s*(?:<s>)?(.*?)(?:</s>)?\s*\(([^()]+)\)\s*", line)
        if match:
            texts[match.group(2)] = " ".join(match.group(1).split())
    return texts


def pocketsphinx_test_cuts(out_dir: str | Path, data_dir: Path = POCKETSPHINX_TEST_DIR) -> CutSet:
    """Write ``out_dir/pocketsphinx_cuts.jsonl.gz``: a cut per transcribed wav of
    :data:`POCKETSPHINX_SETS` (the audio stays where the package put it). Raises
    :class:`RealSpeechMissingError` naming ``pocketsphinx-testdata`` when it is not installed."""
    from lhotse import CutSet

    from asr.data.manifests import save_manifest

    cuts = []
    for folder, fileids, transcription, speaker in POCKETSPHINX_SETS:
        listing, transcripts = data_dir / folder / fileids, data_dir / folder / transcription
        if not (listing.is_file() and transcripts.is_file()):
            raise RealSpeechMissingError(f"{transcripts} is missing: install the Debian package pocketsphinx-testdata")
        texts = read_sphinx_transcription(transcripts)
        for file_id in listing.read_text(encoding="utf-8").split():
            wav = data_dir / folder / f"{file_id}.wav"
            text = normalize_prompt(texts.get(file_id, ""))
            if text is None or not wav.is_file():
                continue
            utt_id = f"{speaker}-{file_id}"
            cuts.append(_cut(utt_id, wav, text, speaker, {"license": POCKETSPHINX_LICENSE}))
    cut_set = CutSet.from_cuts(cuts)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_manifest(cut_set, out_dir / "pocketsphinx_cuts.jsonl.gz")
    return cut_set
