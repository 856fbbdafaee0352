"""Tokenizers: icefall's special-symbol layout, round trips, lang-dir files and the CLI."""

from __future__ import annotations

import logging
import random

import pytest
import sentencepiece as spm
from lhotse import CutSet, Recording, SupervisionSegment
from lhotse.cut import MonoCut

from asr import cli
from asr.data.tokenizer import (
    BpeTokenizer,
    CharTokenizer,
    build_char_tokenizer,
    load_tokenizer,
    read_tokens,
    train_bpe,
)

WORDS = (
    "THE QUICK BROWN FOX JUMPS OVER A LAZY DOG WHILE SPEECH MODELS LEARN TO TRANSCRIBE "
    "EVERY WORD THEY HEAR FROM MANY SPEAKERS IN NOISY ROOMS AND QUIET STUDIOS"
).split()


def english_sentences(count: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(count)]


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
    lang = tmp_path_factory.mktemp("lang_bpe")
    text = lang / "train.txt"
    text.write_text("\n".join(english_sentences()) + "\n", encoding="utf-8")
    train_bpe(text, lang, vocab_size=50)
    return lang


def test_bpe_special_ids_follow_icefall(bpe_dir):
    tok = BpeTokenizer(bpe_dir / "bpe.model")
    assert (tok.blank_id, tok.sos_id, tok.eos_id, tok.unk_id) == (0, 1, 1, 2)
    assert [tok.id_to_token(i) for i in range(3)] == ["<blk>", "<sos/eos>", "<unk>"]
    # The model itself has no bos/eos of its own, so nothing else is reserved.
    sp = spm.SentencePieceProcessor(model_file=str(bpe_dir / "bpe.model"))
    assert (sp.bos_id(), sp.eos_id(), sp.unk_id(), sp.piece_to_id("<blk>")) == (-1, -1, 2, 0)
    assert tok.vocab_size == 50


def test_bpe_round_trip(bpe_dir):
    tok = load_tokenizer(bpe_dir)
    assert isinstance(tok, BpeTokenizer)
    for sentence in english_sentences(50, seed=1):
        ids = tok.encode(sentence)
        assert all(3 <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == sentence
    batch = english_sentences(5, seed=2)
    assert tok.encode_batch(batch) == [tok.encode(s) for s in batch]
    # Blank and <sos/eos> never reach the text (a CTC/transducer output may contain them).
    ids = tok.encode("THE DOG")
    assert tok.decode([0, *ids, 1, 0]) == "THE DOG"


def test_tokens_txt_matches_the_model(bpe_dir):
    tok = BpeTokenizer(bpe_dir / "bpe.model")
    table = read_tokens(bpe_dir / "tokens.txt")
    assert table == {tok.id_to_token(i): i for i in range(tok.vocab_size)}


def test_icefall_trained_model_loads(tmp_path):
    # icefall's local/train_bpe_model.py settings, written out here independently of train_bpe.
    text = tmp_path / "transcript_words.txt"
    text.write_text("\n".join(english_sentences()) + "\n", encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(text),
        vocab_size=50,
        model_type="unigram",
        model_prefix=str(tmp_path / "unigram_50"),
        input_sentence_size=100000000,
        character_coverage=1.0,
        user_defined_symbols=["<blk>", "<sos/eos>"],
        unk_id=2,
        bos_id=-1,
        eos_id=-1,
        minloglevel=2,
    )
    tok = BpeTokenizer(tmp_path / "unigram_50.model")
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "unigram_50.model"))
    sentence = "THE LAZY DOG HEARS MANY SPEAKERS"
    assert tok.encode(sentence) == sp.encode(sentence)
    assert tok.vocab_size == 50


def test_model_with_other_layout_is_rejected(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("\n".join(english_sentences()) + "\n", encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(text), vocab_size=40, model_prefix=str(tmp_path / "plain"), minloglevel=2)
    with pytest.raises(ValueError, match=r"plain\.model: ids 0,1,2 are \['<unk>', '<s>', '</s>'\]"):
        BpeTokenizer(tmp_path / "plain.model")


def test_bpe_unknown_characters_are_counted(bpe_dir, caplog):
    tok = BpeTokenizer(bpe_dir / "bpe.model")
    caplog.set_level(logging.WARNING, logger="asr.data.tokenizer")
    ids = tok.encode("THE DOG Ж")
    assert tok.unk_id in ids
    assert tok.unknown_counts == {"Ж": 1}
    assert "'Ж'" in caplog.text and "bpe.model" in caplog.text
    tok.encode("Ж")
    assert tok.num_unknown == 2
    assert caplog.text.count("'Ж'") == 1  # warned once per symbol, counted every time


def test_char_tokenizer_layout_and_round_trip(tmp_path):
    texts = ["今天 天气 很好", "我们 去 公园 散步"]
    tok = build_char_tokenizer(texts, tmp_path)
    table = read_tokens(tmp_path / "tokens.txt")
    chars = sorted(set("".join(texts).replace(" ", "")))
    assert table == {"<blk>": 0, "<sos/eos>": 1, "<unk>": 2, **{ch: 3 + i for i, ch in enumerate(chars)}}
    assert tok.vocab_size == 3 + len(chars)
    ids = tok.encode("今天 天气 很好")
    assert ids == [table[ch] for ch in "今天天气很好"]
    assert tok.decode(ids) == "今天天气很好"
    assert tok.decode([0, *ids, 1]) == "今天天气很好"
    assert (tok.blank_id, tok.sos_id, tok.eos_id, tok.unk_id) == (0, 1, 1, 2)
    assert isinstance(load_tokenizer(tmp_path), CharTokenizer)


def test_load_tokenizer_without_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no bpe.model or tokens.txt"):
        load_tokenizer(tmp_path)


def test_id_out_of_range(bpe_dir, tmp_path):
    with pytest.raises(IndexError, match="out of range"):
        load_tokenizer(bpe_dir).id_to_token(10_000)
    with pytest.raises(IndexError, match="out of range"):
        build_char_tokenizer(["ab"], tmp_path).id_to_token(5)


def cuts_with_texts(texts: list[str]) -> CutSet:
    cuts = []
    for i, text in enumerate(texts):
        recording = Recording(id=f"r{i}", sources=[], sampling_rate=16000, num_samples=16000, duration=1.0)
        supervision = SupervisionSegment(id=f"s{i}", recording_id=f"r{i}", start=0, duration=1.0, text=text)
        cuts.append(
            MonoCut(id=f"c{i}", start=0, duration=1.0, channel=0, recording=recording, supervisions=[supervision])
        )
    return CutSet.from_cuts(cuts)


def test_cli_bpe_from_cuts(tmp_path):
    sentences = english_sentences(300)
    cuts_with_texts(sentences).to_file(tmp_path / "cuts.jsonl.gz")
    lang = tmp_path / "lang_bpe_50"
    assert (
        cli.main(
            [
                "data",
                "tokenizer",
                "bpe",
                "--cuts",
                str(tmp_path / "cuts.jsonl.gz"),
                "--vocab-size",
                "50",
                "--out-dir",
                str(lang),
            ]
        )
        == 0
    )
    assert (lang / "transcript_words.txt").read_text(encoding="utf-8").splitlines() == sentences
    assert len(read_tokens(lang / "tokens.txt")) == 50
    tok = load_tokenizer(lang)
    assert tok.decode(tok.encode(sentences[0])) == sentences[0]


def test_cli_bpe_on_its_own_transcript(tmp_path):
    lang = tmp_path / "lang"
    lang.mkdir()
    sentences = english_sentences(300)
    (lang / "transcript_words.txt").write_text("\n".join(sentences) + "\n", encoding="utf-8")
    args = ["bpe", "--text", str(lang / "transcript_words.txt"), "--vocab-size", "40", "--out-dir", str(lang)]
    assert cli.main(["data", "tokenizer", *args]) == 0
    assert (lang / "transcript_words.txt").read_text(encoding="utf-8").splitlines() == sentences


def test_cli_bpe_vocab_too_large_is_a_clear_error(tmp_path, caplog):
    text = tmp_path / "t.txt"
    text.write_text("A B C\n", encoding="utf-8")
    caplog.set_level(logging.ERROR)
    assert (
        cli.main(
            ["data", "tokenizer", "bpe", "--text", str(text), "--vocab-size", "500", "--out-dir", str(tmp_path / "l")]
        )
        == 1
    )
    assert "Vocabulary size too high (500)" in caplog.text and "t.txt" in caplog.text


def test_cli_missing_input(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["data", "tokenizer", "chars", "--text", str(tmp_path / "absent.txt"), "--out-dir", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "absent.txt: no such file" in capsys.readouterr().err


def test_cli_chars_from_text(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("今天 天气 很好\n我们 去 公园\n", encoding="utf-8")
    assert cli.main(["data", "tokenizer", "chars", "--text", str(text), "--out-dir", str(tmp_path / "lang_char")]) == 0
    table = read_tokens(tmp_path / "lang_char" / "tokens.txt")
    assert len(table) == 3 + len(set("今天天气很好我们去公园"))
    assert not (tmp_path / "lang_char" / "bpe.model").exists()
