"""The encoder contract (asr.encoders.base): every preset is an Encoder, the causal-capable families are
StreamingEncoders whose chunk and left context are set in one way, and `asr decode --chunk-size` on a tiny
causal model of each streaming family prints what greedy search gives on the chunk-masked full forward."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from asr.encoders import Encoder, StreamingEncoder, build_encoder, encoder_names
from asr.streaming import is_streaming_encoder, simulate_streaming
from asr.streaming.simulate import LOG_EPS

from helpers.tiny_models import TINY_CONFORMER, TINY_TRANSFORMER, TINY_ZIPFORMER

TINY = {
    "zipformer-xs": TINY_ZIPFORMER,
    "conformer-xs": TINY_CONFORMER,
    "transformer-transducer-small": TINY_TRANSFORMER,
}
FRAME_MS = {"zipformer-xs": 20, "conformer-xs": 40, "transformer-transducer-small": 40}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: intra-op threads only add overhead (several times the run time on a busy
    machine), so this module runs on one and restores the setting afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(name: str, causal: bool = True, **kwargs) -> Encoder:
    torch.manual_seed(0)
    return build_encoder(name, causal=causal, **TINY[name], **kwargs).eval()


# -- (a) every preset is an Encoder ------------------------------------------------------------------------
@pytest.mark.parametrize("name", encoder_names())
def test_every_preset_is_an_encoder(name):
    with torch.device("meta"):  # no weights materialised: the large presets cost nothing
        encoder = build_encoder(name)
    assert isinstance(encoder, Encoder) and encoder.output_dim > 0
    if name.startswith("efficient-conformer"):
        assert not isinstance(encoder, StreamingEncoder)
        with pytest.raises(ValueError, match="no causal"):
            build_encoder(name, causal=True)
        return
    assert isinstance(encoder, StreamingEncoder) and not encoder.causal and not encoder.supports_streaming
    assert not is_streaming_encoder(encoder)
    assert encoder.chunk_frame_ms == (20 if name.startswith("zipformer") else 40)


@pytest.mark.parametrize("name", ["zipformer-xs", "conformer-xs", "transformer-transducer-small"])
def test_each_streaming_family_builds_causal(name):
    # One preset per family: causality is a constructor switch of the family, the same for every size.
    with torch.device("meta"):
        causal = build_encoder(name, causal=True)
    assert isinstance(causal, StreamingEncoder) and causal.causal and causal.supports_streaming
    assert is_streaming_encoder(causal)


def test_the_contract_is_abstract():
    with pytest.raises(TypeError, match="abstract"):
        Encoder()

    class Partial(StreamingEncoder):  # an Encoder's methods, but none of the streaming ones
        output_dim = 4

        def forward(self, x, x_lens):
            return x, x_lens

        def output_lengths(self, x_lens):
            return x_lens

    with pytest.raises(TypeError, match="init_states"):
        Partial()


def test_attribute_lookalikes_are_not_streaming_encoders():
    """Having the attribute names is not enough: only a causal StreamingEncoder streams."""

    class LookAlike(torch.nn.Module):
        causal = True
        streaming_feature_frames = 13
        streaming_feature_shift = 8

        def init_states(self, batch_size=1, device="cpu"):
            return []

        def streaming_forward(self, x, x_lens, states):
            return x, x_lens, states

    assert not is_streaming_encoder(LookAlike())
    with pytest.raises(ValueError, match="not a streaming encoder"):
        simulate_streaming(LookAlike(), torch.zeros(1, 20, 80), torch.tensor([20]))


def test_asr_model_requires_an_encoder():
    from asr.models import AsrModel

    class NotAnEncoder(torch.nn.Module):
        output_dim = 8

    with pytest.raises(TypeError, match="Encoder"):
        AsrModel(NotAnEncoder(), 5)
    model = AsrModel(tiny("conformer-xs", causal=False), 5, decoder_dim=8, joiner_dim=8)
    lens = torch.tensor([61, 45, 7])
    assert torch.equal(model.encoder_output_lengths(lens), ((lens - 1) // 2 - 1) // 2)


# -- (b) set_streaming, full_context and their errors ------------------------------------------------------
@pytest.mark.parametrize(
    "name, chunk, left", [("zipformer-xs", 32, 64), ("conformer-xs", 4, 16), ("transformer-transducer-small", 4, 16)]
)
def test_set_streaming_in_each_familys_units(name, chunk, left):
    encoder = tiny(name)
    assert encoder.chunk_frame_ms == FRAME_MS[name]
    encoder.set_streaming(chunk, left)
    assert encoder.streaming_context() == (chunk, left)
    # The family's own attributes, which saved encoder_kwargs and other code use, hold the setting.
    if name == "transformer-transducer-small":
        assert (encoder.chunk_size, encoder.stream_chunk_size, encoder.left_context) == (chunk, chunk, left)
        assert encoder.streaming_feature_frames == 4 * chunk + 3  # chunked mode: no right-context look-ahead
    else:
        assert (encoder.chunk_size, encoder.left_context_frames) == (chunk, left)
    # A call consumes the chunk's feature frames (10 ms) plus the front end's look-ahead, and advances by
    # the chunk: chunk_size frames of chunk_frame_ms each.
    assert encoder.streaming_feature_shift * 10 == chunk * encoder.chunk_frame_ms
    lookahead = {"zipformer-xs": 7, "conformer-xs": 3, "transformer-transducer-small": 3}[name]
    assert encoder.streaming_feature_frames == encoder.streaming_feature_shift + lookahead
    encoder.set_streaming(2 * chunk)  # None keeps the left context
    assert encoder.streaming_context() == (2 * chunk, left)


@pytest.mark.parametrize("name", list(TINY))
def test_set_streaming_changes_the_masked_forward_and_streams_equal_it(name):
    """After set_streaming the chunk-masked forward is the one the stream reproduces, and it differs from
    the model's build-time setting."""
    encoder = tiny(name)
    chunk, left = {"zipformer-xs": (32, 64), "conformer-xs": (8, 16), "transformer-transducer-small": (8, 16)}[name]
    torch.manual_seed(1)
    x, lens = torch.randn(1, 250, 80), torch.tensor([250])
    with torch.no_grad():
        built, _ = encoder(x, lens)
        encoder.set_streaming(chunk, left)
        masked, masked_lens = encoder(x, lens)
    streamed, streamed_lens = simulate_streaming(encoder, x, lens)
    assert torch.equal(streamed_lens, masked_lens)
    # Outputs of the calls whose window lies wholly inside the utterance are the masked forward's (the
    # last ones see end-of-input padding); a call yields chunk // 2 frames at the Zipformer's 25 Hz output.
    complete = (250 - encoder.streaming_feature_frames) // encoder.streaming_feature_shift + 1
    frames = complete * (chunk // 2 if name == "zipformer-xs" else chunk)
    assert frames > 0
    torch.testing.assert_close(streamed[:, :frames], masked[:, :frames], atol=1e-4, rtol=0)
    assert not torch.allclose(built, masked, atol=1e-3)


@pytest.mark.parametrize("name", list(TINY))
def test_set_streaming_errors_leave_the_settings_alone(name):
    encoder = tiny(name)
    before = encoder.streaming_context()
    chunk = 32 if name == "zipformer-xs" else 4
    for args, message in [
        ((0, 64), "chunk_size must be a positive"),
        ((-1, 64), "chunk_size must be a positive"),
        ((chunk, chunk + chunk // 2), "must be a multiple of chunk_size"),
        ((chunk, -1), "finite left context"),
        ((chunk, 0), "finite left context"),
    ]:
        with pytest.raises(ValueError, match=message):
            encoder.set_streaming(*args)
        assert encoder.streaming_context() == before
    with pytest.raises(ValueError, match="causal=False"):
        tiny(name, causal=False).set_streaming(chunk, 4 * chunk)


def test_zipformer_chunk_must_suit_every_stack():
    encoder = tiny("zipformer-xs")
    with pytest.raises(ValueError, match="downsampling factor"):
        encoder.set_streaming(12, 48)  # the 8x stack cannot split a 12-frame chunk
    with pytest.raises(ValueError, match="conv kernel"):
        encoder.set_streaming(8, 16)  # kernel 7 at 8x reaches 24 frames back
    assert encoder.streaming_context() == (16, 128)


@pytest.mark.parametrize("name", list(TINY))
def test_full_context_lifts_every_limit_and_restores(name):
    encoder = tiny(name)
    before = {attr: getattr(encoder, attr) for attr in encoder.context_attributes}
    torch.manual_seed(2)
    x, lens = torch.randn(2, 200, 80), torch.tensor([200, 150])
    with torch.no_grad():
        limited, _ = encoder(x, lens)
        with encoder.full_context():
            assert encoder.streaming_context() == (-1, -1)
            full, full_lens = encoder(x, lens)
    assert {attr: getattr(encoder, attr) for attr in encoder.context_attributes} == before
    # Reference: each frame sees the whole utterance, so a padded utterance equals itself alone, and the
    # future reaches the first frame (it cannot under any chunk mask).
    changed = x.clone()
    changed[:, 150:] += 1.0
    with torch.no_grad(), encoder.full_context():
        alone, _ = encoder(x[1:, :150], lens[1:])
        future, _ = encoder(changed[:1], lens[:1])
    torch.testing.assert_close(full[1, : full_lens[1]], alone[0], atol=1e-4, rtol=0)
    assert not torch.allclose(future[0, 0], full[0, 0], atol=1e-5)
    assert not torch.allclose(limited, full, atol=1e-3)
    # Restored also when the block raises.
    with pytest.raises(RuntimeError, match="inside"), encoder.full_context():
        raise RuntimeError("inside")
    assert {attr: getattr(encoder, attr) for attr in encoder.context_attributes} == before


def test_transformer_full_context_lifts_its_right_context_too():
    encoder = tiny("transformer-transducer-small")  # causal default: limited context L=10, R=2
    assert (encoder.chunk_size, encoder.left_context, encoder.right_context) == (0, 10, 2)
    assert encoder.streaming_context() == (-1, 10)
    with encoder.full_context():
        assert (encoder.chunk_size, encoder.left_context, encoder.right_context) == (0, -1, -1)
        assert encoder.attention_mask(12) is None
    assert (encoder.chunk_size, encoder.left_context, encoder.right_context) == (0, 10, 2)


def test_full_context_leaves_a_non_causal_model_as_built():
    # A non-causal transformer trained with a fixed limited context keeps it.
    encoder = build_encoder("transformer-transducer-small", left_context=6, right_context=2, **TINY_TRANSFORMER)
    with encoder.full_context():
        assert (encoder.left_context, encoder.right_context) == (6, 2)


def test_streaming_block_restores_the_settings():
    encoder = tiny("conformer-xs", chunk_size=4, left_context_frames=8)
    with encoder.streaming(8, 32):
        assert encoder.streaming_context() == (8, 32)
    assert encoder.streaming_context() == (4, 8)
    with pytest.raises(ValueError, match="multiple"), encoder.streaming(8, 12):
        pass
    assert encoder.streaming_context() == (4, 8)


# -- (c) asr decode --chunk-size ---------------------------------------------------------------------------
# Build-time settings of each causal model, and the different ones `asr decode` is asked for.
DECODE_CASES = [
    ("zipformer-xs", {"chunk_size": 16, "left_context_frames": 128}, 32, 64),
    ("conformer-xs", {"chunk_size": 4, "left_context_frames": 8}, 8, 16),
    ("transformer-transducer-small", {}, 4, 12),  # built in its limited-context mode (L=10, R=2)
]


def shaped_noise(seconds: float, loud_seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Noise in 50 ms segments of random colour (a moving average of random length) and loudness: loud for
    ``loud_seconds``, then near silence, so that the fbank frames vary along the utterance and what a frame
    may attend to (the loud start or not) depends on the context setting."""
    segments = []
    for k in range(int(seconds * 20) + 1):
        width = int(rng.integers(1, 12))
        noise = np.convolve(rng.standard_normal(800), np.ones(width) / np.sqrt(width), mode="same")
        level = rng.uniform(-1.5, -0.3) if k < loud_seconds * 20 else rng.uniform(-4.5, -3.5)
        segments.append(noise * 10**level)
    return np.concatenate(segments)[: int(16000 * seconds)].astype(np.float32)


@pytest.fixture(scope="module")
def wavs(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("wavs")
    paths = []
    for i, (seconds, loud_seconds) in enumerate(((1.3, 0.5), (0.9, 0.3))):
        path = root / f"noise{i}.wav"
        soundfile.write(path, shaped_noise(seconds, loud_seconds, np.random.default_rng(i)), 16000)
        paths.append(path)
    return paths


def set_by_hand(encoder, name: str, chunk: int, left: int) -> None:
    """A context setting written straight to each family's attributes (the reference's way); chunk -1 and
    left -1: full context."""
    if name == "transformer-transducer-small":
        encoder.chunk_size, encoder.left_context = max(chunk, 0), left
        if chunk < 0:
            encoder.right_context = -1
    else:
        encoder.chunk_size, encoder.left_context_frames = chunk, left


@pytest.mark.parametrize("name, build_settings, chunk, left", DECODE_CASES)
def test_decode_chunk_size_equals_greedy_search_on_the_masked_forward(
    name, build_settings, chunk, left, wavs, tmp_path, capsys
):
    from asr.checkpoint import save_model
    from asr.cli import main
    from asr.data.audio import load_audio
    from asr.data.features import compute_fbank
    from asr.data.tokenizer import build_char_tokenizer
    from asr.decoding import greedy_search
    from asr.models import build_model

    tokenizer = build_char_tokenizer(["abcdefghijklmnop"], tmp_path / "lang")
    torch.manual_seed(0)
    model = build_model(
        name,
        tokenizer.vocab_size,
        heads=("transducer",),
        causal=True,
        encoder_kwargs={**TINY[name], **build_settings},
        decoder_dim=16,
        joiner_dim=32,
    ).eval()
    with torch.no_grad():  # random weights far enough from their initial values to give varied tokens
        for p in model.parameters():
            p.add_(0.7 * torch.randn_like(p))
    path = save_model(
        tmp_path / "model.pt",
        model,
        extra={"tokenizer": {"tokens.txt": (tmp_path / "lang" / "tokens.txt").read_bytes()}},
    )

    capsys.readouterr()
    status = main(
        [
            "decode",
            "--checkpoint",
            str(path),
            "--chunk-size",
            str(chunk),
            "--left-context-frames",
            str(left),
            *map(str, wavs),
        ]
    )
    assert status == 0
    printed = dict(line.split("\t", 1) for line in capsys.readouterr().out.splitlines() if "\t" in line)

    # Reference: each file alone, followed by one streaming window of silence-level padding (a live stream
    # at end of input gets the same), through the full forward with the chunk mask written by hand, cut to
    # the utterance's own output length, then greedy search. Also with the model's build-time setting and
    # with full context, to show that the setting asked for is the one that decides the output.
    window = {"zipformer-xs": 2 * chunk + 7}.get(name, 4 * chunk + 3)
    texts: dict[str, dict[str, str]] = {"asked": {}, "built": {}, "full": {}}
    for setting in texts:
        reference = copy.deepcopy(model)
        if setting == "asked":
            set_by_hand(reference.encoder, name, chunk, left)
        elif setting == "full":
            set_by_hand(reference.encoder, name, -1, -1)
        for wav in wavs:
            features = compute_fbank(load_audio(wav, 16000), 16000).unsqueeze(0)
            n = features.size(1)
            padded = torch.cat([features, torch.full((1, window, features.size(2)), LOG_EPS)], dim=1)
            frames = reference.encoder.output_lengths(torch.tensor([n]))
            with torch.no_grad():
                enc_out, _ = reference.encoder(padded, torch.tensor([n + window]))
                hyp = greedy_search(reference, enc_out[:, : int(frames)], frames)[0]
            texts[setting][wav.stem] = tokenizer.decode(hyp.tokens)
    assert printed == texts["asked"]
    assert all(len(text) >= 10 for text in printed.values()), printed
    assert texts["asked"] != texts["built"] and texts["asked"] != texts["full"]
