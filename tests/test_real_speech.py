"""The real-speech evaluation set (asr.data.real_speech): transcript rules, the manifest built from
G.722 files, and the installed Debian packages when present."""

from __future__ import annotations

import gzip
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile
from lhotse import load_manifest

from asr.data import real_speech

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed (Debian package ffmpeg)")


@pytest.mark.parametrize(
    "written, normalized",
    [
        (
            "Please enter your password followed by the pound key.",
            "please enter your password followed by the pound key",
        ),
        ("Press 1 to accept this call, or 2 to reject it", "press one to accept this call or two to reject it"),
        ("I'm sorry, but I was unable to locate the person", "i'm sorry but i was unable to locate the person"),
        (
            'Dial 4 to send this caller to a polite "don\'t call" menu.',
            "dial four to send this caller to a polite don't call menu",
        ),
        ("Call-Forward on Busy.", "call forward on busy"),
        ("[ascending tones]", None),
        ("<beep ascending>", None),
        ("(1 second of silence)", None),
        ("dial extension 8500 now", None),  # eight thousand five hundred, or eight five zero zero?
        ("H.323", None),
        ("press * to toggle pause", None),
        ("...", None),
    ],
)
def test_normalize_prompt(written, normalized):
    assert real_speech.normalize_prompt(written) == normalized


def _g722(path: Path, seconds: float, freq: float) -> None:
    """A G.722 file of a tone, made with ffmpeg."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * 16000)) / 16000
    pcm = (0.3 * np.sin(2 * np.pi * freq * t)).astype("<f4").tobytes()
    cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "f32le", "-ar", "16000", "-ac", "1", "-i", "pipe:0"]
    subprocess.run([*cmd, "-c:a", "g722", "-f", "g722", str(path)], input=pcm, check=True)


@needs_ffmpeg
def test_manifest_from_g722_prompts(tmp_path):
    sounds = tmp_path / "sounds"
    _g722(sounds / "auth-thankyou.g722", 0.8, 440)
    _g722(sounds / "digits" / "7.g722", 0.5, 660)
    _g722(sounds / "beep.g722", 0.3, 1000)
    transcripts = tmp_path / "core-sounds-en.txt.gz"
    with gzip.open(transcripts, "wt") as f:
        f.write("; Core Asterisk Sounds in English\n\nauth-thankyou: Thank you.\ndigits/7: seven\n")
        f.write("beep: [this is a simple beep tone]\nnot-on-disk: Goodbye.\n")
    out = tmp_path / "out"
    cuts = real_speech.asterisk_prompts_cuts(out, sounds_dir=sounds, transcripts=transcripts)
    assert [(c.id, c.supervisions[0].text) for c in cuts] == [
        ("asterisk-allison-auth-thankyou", "thank you"),
        ("asterisk-allison-digits-7", "seven"),
    ]
    assert list(load_manifest(out / "asterisk_cuts.jsonl.gz").ids) == list(cuts.ids)
    for cut, seconds, freq in zip(cuts, (0.8, 0.5), (440, 660)):
        audio, rate = soundfile.read(cut.recording.sources[0].source, dtype="float32")
        assert rate == 16000 and len(audio) == cut.recording.num_samples
        assert abs(cut.duration - seconds) < 0.01
        # The decoded tone is the encoded one: G.722 keeps a 440/660 Hz sine.
        peak_hz = np.fft.rfftfreq(len(audio), 1 / 16000)[np.argmax(np.abs(np.fft.rfft(audio)))]
        assert abs(peak_hz - freq) < 5
        assert cut.supervisions[0].custom["license"].startswith("CC-BY-SA-3.0")
    # A rerun keeps the decoded wavs.
    before = {p: p.stat().st_mtime_ns for p in (out / "audio").iterdir()}
    real_speech.asterisk_prompts_cuts(out, sounds_dir=sounds, transcripts=transcripts)
    assert {p: p.stat().st_mtime_ns for p in (out / "audio").iterdir()} == before


def test_missing_package_names_it(tmp_path):
    with pytest.raises(real_speech.RealSpeechMissingError) as error:
        real_speech.asterisk_prompts_cuts(tmp_path, sounds_dir=tmp_path / "none", transcripts=tmp_path / "none.txt")
    message = str(error.value)
    assert "asterisk-core-sounds-en-g722" in message and "asterisk-core-sounds-en)" in message


@needs_ffmpeg
def test_installed_asterisk_prompts(tmp_path):
    if not (real_speech.ASTERISK_TRANSCRIPTS.is_file() and real_speech.ASTERISK_SOUNDS_DIR.is_dir()):
        pytest.skip(f"Debian packages {real_speech.ASTERISK_PACKAGES} not installed")
    entries = list(real_speech.read_asterisk_transcripts())
    kept = [
        (name, text)
        for name, text in entries
        if real_speech.normalize_prompt(text) and (real_speech.ASTERISK_SOUNDS_DIR / f"{name}.g722").is_file()
    ]
    assert len(entries) > 550 and len(kept) > 500
    # Decoding all takes a minute; a dozen of the longer prompts show the real files work.
    sample = [entry for entry in kept if len(entry[1].split()) >= 4][:12]
    subset = tmp_path / "subset.txt"
    subset.write_text("".join(f"{name}: {text}\n" for name, text in sample))
    cuts = real_speech.asterisk_prompts_cuts(tmp_path / "out", transcripts=subset)
    assert len(cuts) == len(sample)
    for cut in cuts:
        audio, rate = soundfile.read(cut.recording.sources[0].source, dtype="float32")
        words = len(cut.supervisions[0].text.split())
        assert rate == 16000 and cut.supervisions[0].speaker == real_speech.SPEAKER
        # Read speech: 0.15-1 s per word, and real energy.
        assert 0.15 < cut.duration / words < 1.0, (cut.id, cut.duration, cut.supervisions[0].text)
        assert np.sqrt(np.mean(audio**2)) > 0.01


def test_read_sphinx_transcription(tmp_path):
    path = tmp_path / "transcription"
    path.write_text("<s> ten of clubs  </s> (001)\n<s> he was not an ill disposed young man </s> (utt-0880)\n\n")
    assert real_speech.read_sphinx_transcription(path) == {
        "001": "ten of clubs",
        "utt-0880": "he was not an ill disposed young man",
    }


def test_pocketsphinx_test_recordings(tmp_path):
    with pytest.raises(real_speech.RealSpeechMissingError, match="pocketsphinx-testdata"):
        real_speech.pocketsphinx_test_cuts(tmp_path, data_dir=tmp_path / "none")
    if not (real_speech.POCKETSPHINX_TEST_DIR / "librivox" / "transcription").is_file():
        pytest.skip("Debian package pocketsphinx-testdata not installed")
    cuts = real_speech.pocketsphinx_test_cuts(tmp_path)
    assert len(cuts) == 10 and len(load_manifest(tmp_path / "pocketsphinx_cuts.jsonl.gz")) == 10
    assert {c.supervisions[0].speaker for c in cuts} == {"pocketsphinx-librivox", "pocketsphinx-cards"}
    texts = {c.id: c.supervisions[0].text for c in cuts}
    assert texts["pocketsphinx-cards-005"] == "eight of spades four of clubs seven of hearts"
    assert 30 < sum(c.duration for c in cuts) < 40
    for cut in cuts:
        info = soundfile.info(cut.recording.sources[0].source)
        assert info.samplerate == 16000 and info.frames == cut.recording.num_samples
