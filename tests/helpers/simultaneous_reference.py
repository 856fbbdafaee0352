"""Oracles for simultaneous decoding: a tiny word-piece tokenizer, tiny AED models, explicit greedy decoding
and a plain re-statement of the EDAtt / AlignAtt step loop written without the library's helpers."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from asr.data.tokenizer import SPECIAL_SYMBOLS, Tokenizer
from asr.models import AsrModel

from helpers.tiny_models import TinyEncoder

MARK = "\u2581"
# Word pieces after the specials (ids 3..): words start at "▁" pieces, the others continue a word.
PIECES = (MARK + "the", MARK + "ca", "t", "s", MARK + "do", "g", MARK + "a", "re")
FEATURE_DIM = 80


class WordPieceTokenizer(Tokenizer):
    """A fixed piece table with the tokenizers' special ids; ``decode`` joins pieces, ``▁`` -> space."""

    def __init__(self, pieces: Sequence[str] = PIECES) -> None:
        super().__init__("the test word pieces")
        self.pieces = [*SPECIAL_SYMBOLS, *pieces]

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError("the test tokenizer only decodes")

    def decode(self, ids) -> str:
        return "".join(self.pieces[i] for i in ids if i not in (self.blank_id, self.sos_id)).replace(MARK, " ").strip()

    def id_to_token(self, token_id: int) -> str:
        return self.pieces[token_id]

    def token_to_id(self, token: str) -> int:
        return self.pieces.index(token) if token in self.pieces else self.unk_id


def tiny_aed_model(seed: int, memory_independent: bool = False, sharpen: float = 4.0) -> AsrModel:
    """An AED-only model (4 decoder layers, so layer index 3 exists) on ``TinyEncoder`` (no subsampling),
    float64, eval mode, with the word-piece tokenizer attached. ``memory_independent`` zeroes the value
    projections of every cross-attention: the decoder's output then ignores the audio (its attention
    weights still depend on it), so every prefix of the audio yields the same token sequence."""
    tokenizer = WordPieceTokenizer()
    torch.manual_seed(seed)
    model = AsrModel(
        TinyEncoder(FEATURE_DIM, 16),
        vocab_size=tokenizer.vocab_size,
        heads=("aed",),
        aed_dim=16,
        aed_layers=4,
        aed_heads=2,
        aed_feedforward_dim=32,
        aed_dropout=0.0,
    ).double()
    with torch.no_grad():
        model.attention_decoder.output.weight.mul_(sharpen)
        if memory_independent:
            for layer in model.attention_decoder.layers:
                layer.cross_attn.v_proj.weight.zero_()
                layer.cross_attn.v_proj.bias.zero_()
    model.tokenizer = tokenizer
    return model.eval()


def explicit_greedy(model: AsrModel, features: torch.Tensor, prefix: Sequence[int], max_len: int) -> list[int]:
    """Greedy decoding from ``prefix`` on features ``(T, F)``: a full teacher-forced forward per token, the
    argmax of the last position (blank excluded) until ``<sos/eos>`` or ``max_len`` tokens. After a
    non-empty prefix the first token must start a word (a ``▁`` piece) or be ``<sos/eos>``."""
    decoder = model.attention_decoder
    eos = decoder.sos_eos_id
    with torch.no_grad():
        memory, lens = model.encode(features.unsqueeze(0), torch.tensor([features.size(0)]))
        tokens = list(prefix)
        while len(tokens) < max_len:
            inputs = torch.tensor([[eos, *tokens]])
            logits = decoder(inputs, torch.tensor([inputs.size(1)]), memory, lens).logits[0, -1].tolist()
            logits[model.blank_id] = -math.inf
            if prefix and len(tokens) == len(prefix):
                pieces = model.tokenizer.pieces
                logits = [v if pieces[i].startswith(MARK) or i == eos else -math.inf for i, v in enumerate(logits)]
            best = max(range(len(logits)), key=logits.__getitem__)
            if best == eos:
                break
            tokens.append(best)
    return tokens


def edatt_rule(alpha: float, lambda_frames: int) -> Callable[[list[list[float]]], bool]:
    """EDAtt on one head-averaged attention row, written out: drop the last frame, divide by the L2 norm,
    sum the last λ values, block when the sum reaches α."""

    def blocked(row: list[float]) -> bool:
        kept = row[:-1]
        if not kept:
            return True
        norm = math.sqrt(sum(v * v for v in kept))
        return sum(v / norm for v in kept[-lambda_frames:]) >= alpha

    return blocked


def alignatt_rule(align_frames: int) -> Callable[[list[float]], bool]:
    """AlignAtt on one head-averaged attention row: block when the first maximum is in the last f frames."""

    def blocked(row: list[float]) -> bool:
        return row.index(max(row)) >= len(row) - align_frames

    return blocked


def reference_simultaneous(
    model: AsrModel, features: torch.Tensor, blocked: Callable[[list[float]], bool], step_ms: int, layer: int = 3
) -> tuple[list[int], list[float]]:
    """The step loop stated plainly (greedy at every step and at the end): per step, the greedy hypothesis
    from the committed tokens on the frames received, each new token's attention row (the decoder layer
    ``layer``, heads averaged) judged in turn, then the whole words among the allowed tokens committed.
    Returns the tokens and each token's commit time (ms)."""
    decoder = model.attention_decoder
    pieces = model.tokenizer.pieces
    eos = decoder.sos_eos_id
    T = features.size(0)
    committed: list[int] = []
    times: list[float] = []
    k = 1
    while k * step_ms < T * 10:
        frames = k * step_ms // 10
        hypothesis = explicit_greedy(model, features[:frames], committed, max_len=frames)
        with torch.no_grad():
            memory, lens = model.encode(features[:frames].unsqueeze(0), torch.tensor([frames]))
            inputs = torch.tensor([[eos, *hypothesis]])
            out = decoder(inputs, torch.tensor([inputs.size(1)]), memory, lens, need_weights=True)
        weights = out.cross_weights[layer][0]  # (H, U + 1, T')
        allowed = len(committed)
        while allowed < len(hypothesis):
            row = [
                sum(float(weights[h, allowed, t]) for h in range(weights.size(0))) / weights.size(0)
                for t in range(frames)
            ]
            if blocked(row):
                break
            allowed += 1
        cut = len(committed)
        for end in range(len(committed) + 1, allowed + 1):
            if end < len(hypothesis) and pieces[hypothesis[end]].startswith(MARK):
                cut = end
        times += [float(k * step_ms)] * (cut - len(committed))
        committed = hypothesis[:cut]
        k += 1
    final = explicit_greedy(model, features, committed, max_len=T)
    times += [float(T * 10)] * (len(final) - len(committed))
    return final, times
