"""A tiny transducer + CTC model and the synthetic task it learns in seconds.

The task: each of the ``VOCAB - 1`` tokens is a fixed random ``FEATURES``-dim pattern held for 2-3 frames,
tokens separated by silent frames, plus Gaussian noise. ``TinyEncoder`` stands in for a real encoder.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from asr.encoders import Encoder
from asr.models import AsrModel

# Encoder kwargs of tiny real encoders (a few thousand parameters), one per streaming family.
TINY_ZIPFORMER = dict(
    num_encoder_layers=1,
    encoder_dim=32,
    feedforward_dim=64,
    encoder_unmasked_dim=16,
    num_heads=2,
    query_head_dim=8,
    value_head_dim=4,
    pos_head_dim=4,
    pos_dim=16,
    cnn_module_kernel=7,
    embed_channels=(4, 8, 16),
)
TINY_CONFORMER = dict(encoder_dim=32, num_layers=2, num_heads=4, feedforward_dim=64, kernel_size=7)
TINY_TRANSFORMER = dict(encoder_dim=32, num_layers=2, num_heads=4, feedforward_dim=64)


def save_tiny_char_transducer(root: Path) -> Path:
    """A tiny Zipformer transducer over the characters ``a``-``j`` saved with its tokenizer under ``root``
    (``root/model.pt``); seeded, with noisy decoder and joiner weights so that its decodes show text."""
    from asr.checkpoint import save_model
    from asr.data.tokenizer import build_char_tokenizer
    from asr.models import build_model

    tokenizer = build_char_tokenizer(["abcdefghij"], root / "lang")
    torch.manual_seed(0)
    model = build_model(
        "zipformer-xs", tokenizer.vocab_size, heads=("transducer",), encoder_kwargs=TINY_ZIPFORMER, decoder_dim=16
    ).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if not name.startswith("encoder."):
                parameter.add_(torch.randn_like(parameter))
    tokens = (root / "lang" / "tokens.txt").read_bytes()
    return save_model(root / "model.pt", model, extra={"tokenizer": {"tokens.txt": tokens}})


# Token ids 0..VOCAB-1, 0 the blank; FEATURES-dim input frames.
VOCAB = 6
FEATURES = 8


class TinyEncoder(Encoder):
    """Stand-in encoder: Conv1d (kernel 3, stride ``subsampling``) + ReLU + Linear."""

    def __init__(self, input_dim: int, output_dim: int, hidden: int = 32, subsampling: int = 1):
        super().__init__()
        self.output_dim = output_dim
        self.subsampling = subsampling
        self.conv = nn.Conv1d(input_dim, hidden, kernel_size=3, padding=1, stride=subsampling)
        self.out = nn.Linear(hidden, output_dim)

    def output_lengths(self, x_lens: torch.Tensor) -> torch.Tensor:
        return (x_lens - 1) // self.subsampling + 1

    def forward(self, x: torch.Tensor, x_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.out(torch.relu(self.conv(x.transpose(1, 2)).transpose(1, 2)))
        return y, self.output_lengths(x_lens)


def make_task(
    num_utts: int, generator: torch.Generator, noise: float = 0.3
) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
    """Utterances of 2-5 tokens; a token is 2-3 frames of its fixed random pattern, tokens separated by
    1-2 silent frames, plus Gaussian noise. Returns (x (N, T, F), x_lens (N,), tokens)."""
    patterns = torch.randn(VOCAB, FEATURES, generator=torch.Generator().manual_seed(1234)) * 1.5

    def randint(low: int, high: int) -> int:
        return int(torch.randint(low, high, (1,), generator=generator))

    utts, tokens = [], []
    for _ in range(num_utts):
        labels = torch.randint(1, VOCAB, (randint(2, 6),), generator=generator).tolist()
        frames = [torch.zeros(randint(1, 3), FEATURES)]
        for label in labels:
            frames += [patterns[label].expand(randint(2, 4), -1), torch.zeros(randint(1, 3), FEATURES)]
        utt = torch.cat(frames)
        utts.append(utt + noise * torch.randn(utt.shape, generator=generator))
        tokens.append(labels)
    return nn.utils.rnn.pad_sequence(utts, batch_first=True), torch.tensor([len(u) for u in utts]), tokens


def tiny_model(seed: int = 0, encoder_dim: int = 32) -> AsrModel:
    """A randomly initialised transducer + CTC model over ``VOCAB`` tokens on ``TinyEncoder`` (no subsampling);
    ``seed`` seeds torch's global generator, so the same seed gives the same weights."""
    torch.manual_seed(seed)
    return AsrModel(
        TinyEncoder(FEATURES, encoder_dim), vocab_size=VOCAB, decoder_dim=16, joiner_dim=32, ctc_dropout=0.0
    )
