"""Lhotse manifests of the real corpora: ``asr data prepare {librispeech,aishell,musan,download}``.

``asr data prepare CORPUS --corpus-dir DIR --out-dir OUT [--parts ...]`` runs lhotse's recipe for the
corpus, normalises the transcripts the way icefall trains on them, and writes for every part::

    OUT/{corpus}_recordings_{part}.jsonl.gz
    OUT/{corpus}_supervisions_{part}.jsonl.gz
    OUT/{corpus}_cuts_{part}.jsonl.gz        (one cut per utterance, no features yet)
    OUT/{corpus}_text_{part}.txt             (normalised transcripts, one a line: tokenizer/LM text)

MUSAN also gets ``OUT/musan_cuts.jsonl.gz``: all parts cut into 10 s windows, windows under 5 s
dropped, which is the noise set icefall mixes into training data.

``asr data prepare download CORPUS --dl-dir DIR`` fetches a corpus with lhotse's downloaders into
``DIR/LibriSpeech``, ``DIR/aishell`` or ``DIR/musan`` (the layouts the commands above expect).

Expected layouts (``--corpus-dir``):
    librispeech  LibriSpeech/{part}/{spk}/{chapter}/{spk}-{chapter}-{utt}.flac + {spk}-{chapter}.trans.txt
    aishell      aishell/data_aishell/wav/{train,dev,test}/{spk}/{id}.wav
                 + aishell/data_aishell/transcript/aishell_transcript_v0.8.txt
    musan        musan/{music,speech,noise}/**/*.wav
"""

from __future__ import annotations

from pathlib import Path

from lhotse import CutSet, RecordingSet, SupervisionSet

from asr.data.manifests import save_manifest

LIBRISPEECH_PARTS = (
    "dev-clean",
    "dev-other",
    "test-clean",
    "test-other",
    "train-clean-100",
    "train-clean-360",
    "train-other-500",
)
MINI_LIBRISPEECH_PARTS = ("dev-clean-2", "train-clean-5")
AISHELL_PARTS = ("train", "dev", "test")
MUSAN_PARTS = ("music", "speech", "noise")
CORPUS_PARTS = {
    "librispeech": LIBRISPEECH_PARTS + MINI_LIBRISPEECH_PARTS,
    "aishell": AISHELL_PARTS,
    "musan": MUSAN_PARTS,
}
# Where to fetch a corpus by hand when the download fails.
CORPUS_URLS = {
    "librispeech": "https://www.openslr.org/12",
    "aishell": "https://www.openslr.org/33",
    "musan": "https://www.openslr.org/17",
}
MUSAN_WINDOW = 10.0  # seconds; the noise windows mixed into training cuts
MUSAN_MIN_WINDOW = 5.0  # shorter windows (recording tails) are dropped


class PrepareError(Exception):
    """A problem with the user's corpus or arguments; its message names the path or part."""


def normalize_librispeech(text: str) -> str:
    """LibriSpeech transcripts are upper-case words already, which is what icefall's BPE models are
    trained on; only stray whitespace is collapsed (and case forced, for hand-made copies)."""
    return " ".join(text.split()).upper()


def normalize_aishell(text: str) -> str:
    """AISHELL transcripts are word-segmented with spaces; icefall (via lhotse) trains on the
    characters with the spaces removed. Latin letters are upper-cased, as lhotse does."""
    return "".join(text.split()).upper()


def _check_corpus_dir(corpus_dir: Path) -> None:
    if not corpus_dir.is_dir():
        raise PrepareError(f"corpus directory {corpus_dir} does not exist")
    if not any(corpus_dir.iterdir()):
        raise PrepareError(f"corpus directory {corpus_dir} is empty")


def _check_part_names(corpus: str, parts: list[str]) -> None:
    unknown = [p for p in parts if p not in CORPUS_PARTS[corpus]]
    if unknown:
        raise PrepareError(
            f"unknown {corpus} part(s) {', '.join(unknown)}; known parts: {', '.join(CORPUS_PARTS[corpus])}"
        )


def _missing_part(corpus: str, part: str, part_dir: Path, corpus_dir: Path) -> PrepareError:
    present = [p for p in CORPUS_PARTS[corpus] if (part_dir.parent / p).is_dir()]
    return PrepareError(
        f"{corpus} part {part!r} is absent: no directory {part_dir} "
        f"(parts present under {corpus_dir}: {', '.join(present) or 'none'})"
    )


def _write_part(
    corpus: str,
    part: str,
    recordings: RecordingSet,
    supervisions: SupervisionSet | None,
    out_dir: Path,
) -> CutSet:
    """Write the recordings/supervisions/cuts/text of one part and print its counts."""
    # Each manifest is written whole or not at all (an interrupted run leaves no torn file).
    save_manifest(recordings, out_dir / f"{corpus}_recordings_{part}.jsonl.gz")
    if supervisions is not None:
        save_manifest(supervisions, out_dir / f"{corpus}_supervisions_{part}.jsonl.gz")
    cuts = CutSet.from_manifests(recordings=recordings, supervisions=supervisions)
    # Every recording holds one utterance: name its cut after it (lhotse appends a counter), so that
    # cut ids are the corpus's utterance ids in decoding results and WER reports.
    cuts = CutSet.from_cuts(cut.with_id(cut.recording_id) for cut in cuts).sort_by_recording_id()
    cuts_path = out_dir / f"{corpus}_cuts_{part}.jsonl.gz"
    save_manifest(cuts, cuts_path)
    if supervisions is not None:
        texts = [s.text for cut in cuts for s in cut.supervisions]
        (out_dir / f"{corpus}_text_{part}.txt").write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    hours = sum(c.duration for c in cuts) / 3600
    speakers = len({s.speaker for c in cuts for s in c.supervisions})
    who = f", {speakers} speakers" if supervisions is not None else ""
    print(f"{corpus} {part}: {len(cuts)} cuts, {hours:.2f} h{who} -> {cuts_path}")
    return cuts


def _normalised(supervisions: SupervisionSet, normalize) -> SupervisionSet:
    return SupervisionSet.from_segments(s.transform_text(normalize) for s in supervisions)


def prepare_librispeech(
    corpus_dir: Path, out_dir: Path, parts: list[str] | None = None, num_jobs: int = 1
) -> dict[str, CutSet]:
    """Manifests of LibriSpeech parts (default: every part found in ``corpus_dir``)."""
    from lhotse.recipes.librispeech import prepare_librispeech as lhotse_prepare

    _check_corpus_dir(corpus_dir)
    if parts is None:
        parts = [p for p in CORPUS_PARTS["librispeech"] if (corpus_dir / p).is_dir()]
        if not parts:
            raise PrepareError(f"no LibriSpeech part directory (e.g. dev-clean, train-clean-100) in {corpus_dir}")
    _check_part_names("librispeech", parts)
    expected: dict[str, int] = {}
    for part in parts:
        if not (corpus_dir / part).is_dir():
            raise _missing_part("librispeech", part, corpus_dir / part, corpus_dir)
        transcripts = list((corpus_dir / part).rglob("*.trans.txt"))
        if not transcripts:
            raise PrepareError(f"librispeech part {part!r} has no *.trans.txt files under {corpus_dir / part}")
        expected[part] = sum(1 for t in transcripts for line in t.read_text().splitlines() if line.strip())

    out_dir.mkdir(parents=True, exist_ok=True)
    # No output_dir: lhotse would write the unnormalised supervisions and reuse stale manifests.
    manifests = lhotse_prepare(corpus_dir, dataset_parts=parts, num_jobs=num_jobs)
    result = {}
    for part in parts:
        recordings = manifests[part]["recordings"]
        supervisions = _normalised(manifests[part]["supervisions"], normalize_librispeech)
        if len(recordings) < expected[part]:
            # lhotse skips (and logs) transcript lines whose .flac is missing; say how many.
            print(f"librispeech {part}: skipped {expected[part] - len(recordings)} utterances whose .flac is missing")
        result[part] = _write_part("librispeech", part, recordings, supervisions, out_dir)
    return result


def prepare_aishell(corpus_dir: Path, out_dir: Path, parts: list[str] | None = None) -> dict[str, CutSet]:
    """Manifests of AISHELL-1 (default parts: train, dev, test).

    lhotse's recipe scans all three parts at once, so all three must be present even when ``parts``
    asks for fewer; the others are just not written.
    """
    from lhotse.recipes.aishell import prepare_aishell as lhotse_prepare

    _check_corpus_dir(corpus_dir)
    parts = list(AISHELL_PARTS) if parts is None else parts
    _check_part_names("aishell", parts)
    transcript = corpus_dir / "data_aishell" / "transcript" / "aishell_transcript_v0.8.txt"
    if not transcript.is_file():
        raise PrepareError(f"AISHELL transcript {transcript} does not exist")
    wav_root = corpus_dir / "data_aishell" / "wav"
    for part in AISHELL_PARTS:
        part_dir = wav_root / part
        if not part_dir.is_dir():
            raise _missing_part("aishell", part, part_dir, corpus_dir)
        if not any(part_dir.rglob("*.wav")):
            raise PrepareError(f"aishell part {part!r} has no .wav files under {part_dir}")

    out_dir.mkdir(parents=True, exist_ok=True)
    manifests = lhotse_prepare(corpus_dir)
    result = {}
    for part in parts:
        recordings = manifests[part]["recordings"]
        supervisions = _normalised(manifests[part]["supervisions"], normalize_aishell)
        # AISHELL ships some audio without transcripts; lhotse leaves those out.
        untranscribed = sum(1 for _ in (wav_root / part).rglob("*.wav")) - len(recordings)
        if untranscribed:
            print(f"aishell {part}: skipped {untranscribed} .wav files without a transcript")
        result[part] = _write_part("aishell", part, recordings, supervisions, out_dir)
    return result


def prepare_musan(corpus_dir: Path, out_dir: Path, parts: list[str] | None = None) -> dict[str, CutSet]:
    """Manifests of MUSAN parts (default: music, speech, noise) plus the windowed noise CutSet
    ``OUT/musan_cuts.jsonl.gz``."""
    from lhotse.recipes.musan import prepare_musan as lhotse_prepare

    _check_corpus_dir(corpus_dir)
    parts = list(MUSAN_PARTS) if parts is None else parts
    _check_part_names("musan", parts)
    for part in parts:
        if not (corpus_dir / part).is_dir():
            raise _missing_part("musan", part, corpus_dir / part, corpus_dir)
        if not any((corpus_dir / part).rglob("*.wav")):
            raise PrepareError(f"musan part {part!r} has no .wav files under {corpus_dir / part}")

    out_dir.mkdir(parents=True, exist_ok=True)
    manifests = lhotse_prepare(corpus_dir, parts=parts)
    result = {}
    for part in parts:
        # Music supervisions only carry genre tags; the cuts are noise sources, so recordings suffice.
        if "supervisions" in manifests[part]:
            save_manifest(manifests[part]["supervisions"], out_dir / f"musan_supervisions_{part}.jsonl.gz")
        result[part] = _write_part("musan", part, manifests[part]["recordings"], None, out_dir)
    windows = (
        CutSet.from_cuts(cut for cuts in result.values() for cut in cuts)
        .cut_into_windows(MUSAN_WINDOW)
        .filter(lambda cut: cut.duration > MUSAN_MIN_WINDOW)
        .to_eager()
    )
    save_manifest(windows, out_dir / "musan_cuts.jsonl.gz")
    print(f"musan windows: {len(windows)} cuts of {MUSAN_WINDOW:g} s -> {out_dir / 'musan_cuts.jsonl.gz'}")
    return result


def download(corpus: str, dl_dir: Path, parts: list[str] | None = None, mirror: str | None = None) -> Path:
    """Fetch and unpack a corpus with lhotse's downloader; returns the corpus directory.

    Needs the internet; any failure becomes a ``PrepareError`` saying what to fetch by hand.
    """
    if parts is not None:
        _check_part_names(corpus, parts)
    try:
        if corpus == "librispeech":
            from lhotse.recipes.librispeech import download_librispeech

            kwargs = {"base_url": mirror} if mirror else {}
            return download_librispeech(dl_dir, dataset_parts=parts or list(LIBRISPEECH_PARTS), **kwargs)
        if corpus == "aishell":
            from lhotse.recipes.aishell import download_aishell

            return download_aishell(dl_dir, **({"base_url": mirror} if mirror else {}))
        from lhotse.recipes.musan import download_musan

        return download_musan(dl_dir, **({"url": f"{mirror}/17/musan.tar.gz"} if mirror else {}))
    except Exception as e:  # network, HTTP, disk and archive errors alike: all mean "fetch it by hand"
        raise PrepareError(
            f"could not download {corpus} into {dl_dir} ({type(e).__name__}: {e}). "
            f"Fetch it by hand from {CORPUS_URLS[corpus]} and unpack it under {dl_dir}."
        ) from e
