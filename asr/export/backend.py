"""The Recognizers' onnxruntime backend: an ``asr export onnx`` directory presented as the model they decode.

:func:`load_onnx_model` returns an :class:`OnnxModel` with the parts of :class:`asr.models.AsrModel` that
``asr.Recognizer``, ``asr.OnlineRecognizer`` and the searches use, each running its exported graph in
onnxruntime (:class:`asr.export.onnxruntime.OnnxTransducer`):

* ``encoder``: for an offline export an :class:`asr.encoders.base.Encoder` whose forward runs
  ``encoder.onnx``; for a streaming export a causal :class:`asr.encoders.base.StreamingEncoder` whose
  ``streaming_forward`` runs it with the caches as tensors, fixed to the chunk and left context it was
  exported with (other settings raise ``ValueError``).
* ``decoder``: ``decoder(contexts (M, context_size), need_pad=False) -> (M, 1, J)`` through ``decoder.onnx``.
* ``joiner``: ``joiner(enc (..., J), dec (..., J)) -> (..., vocab)`` through ``joiner.onnx``; its
  ``encoder_proj`` / ``decoder_proj`` are identities, since the exported encoder and decoder outputs are
  already projected.
* ``tokenizer``: from ``lang_dir`` when given (a ``bpe.model`` decodes exactly as the torch model's), else
  from ``tokens.txt``: a character table as :class:`asr.data.tokenizer.CharTokenizer`, sentencepiece pieces
  as :class:`TokenTableTokenizer` (text as sentencepiece's decode writes it).

Tensors go in and come out on the CPU as torch tensors; the searches around the graphs run in torch.

    rec = asr.OnlineRecognizer.from_checkpoint("exp/onnx-streaming", backend="onnxruntime")
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor, nn

from asr.data.tokenizer import CharTokenizer, Tokenizer, load_tokenizer, read_tokens
from asr.encoders.base import Encoder, StreamingEncoder
from asr.export.onnxruntime import OnnxTransducer
from asr.models.asr_model import encode_checked

__all__ = [
    "BACKENDS",
    "OnnxModel",
    "TokenTableTokenizer",
    "load_backend_model",
    "load_onnx_model",
    "onnx_stream_options",
]

BACKENDS = ("torch", "onnxruntime")
GRAPHS = ("encoder", "decoder", "joiner")
WORD_START = "\u2581"  # sentencepiece's "▁"
UNK_SURFACE = " \u2047 "  # how sentencepiece writes <unk>
ZIPFORMER_FRAME_MS = 20  # the Zipformer's chunk and left-context unit (its 50 Hz frames)


def zipformer_output_lengths(x_lens: Tensor) -> Tensor:
    """Encoder frames ``(N,)`` of ``x_lens`` fbank frames ``(N,)``: ``((x_lens - 7) // 2 + 1) // 2``."""
    return (((x_lens - 7) // 2).clamp(min=0) + 1) // 2


class OnnxOfflineEncoder(Encoder):
    """An offline ``encoder.onnx``: ``(N, T, 80)``, ``(N,)`` -> ``(N, T', J)``, ``(N,)``."""

    causal = False

    def __init__(self, graphs: OnnxTransducer) -> None:
        super().__init__()
        self.graphs = graphs
        self.output_dim = graphs.encoder.get_outputs()[0].shape[-1]

    def forward(self, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor]:
        out, lens = self.graphs.encode(x.detach().cpu().numpy(), x_lens.detach().cpu().numpy())
        return torch.from_numpy(out), torch.from_numpy(lens)

    def output_lengths(self, x_lens: Tensor) -> Tensor:
        return zipformer_output_lengths(x_lens)


class OnnxStreamingEncoder(StreamingEncoder):
    """A streaming ``encoder.onnx``: one window of ``T`` fbank frames and the caches per call.

    The chunk and left context are those of the export (``chunk_size``, ``left_context_frames`` in 20 ms
    frames); :meth:`streaming` with others, and :meth:`full_context`, raise ``ValueError``.
    """

    causal = True
    chunk_frame_ms = ZIPFORMER_FRAME_MS
    context_attributes = ("chunk_size", "left_context_frames")

    def __init__(self, graphs: OnnxTransducer, export_dir: Path) -> None:
        super().__init__()
        self.graphs = graphs
        self.export_dir = export_dir
        meta = graphs.metadata
        self.output_dim = graphs.encoder.get_outputs()[0].shape[-1]
        self.window_frames, self.shift_frames = graphs.window_frames, graphs.shift_frames
        # Exports of this package name their settings; icefall's give them as sherpa's keys only.
        self.chunk_size = int(meta.get("chunk_size", self.shift_frames // 2))
        self.left_context_frames = int(meta.get("left_context_frames", meta["left_context_len"].split(",")[0]))
        self.export_context = (self.chunk_size, self.left_context_frames)
        # Output frames of the front end that a window holds beyond its chunk (the ConvNeXt's look-ahead).
        self._lookahead = (self.window_frames - self.shift_frames - 7) // 2
        inputs = graphs.encoder.get_inputs()[1:]
        self._batch_dims = [next(i for i, d in enumerate(entry.shape) if not isinstance(d, int)) for entry in inputs]

    def forward(self, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor]:
        raise ValueError(
            f"{self.export_dir} is a streaming export: it encodes chunk by chunk (asr.OnlineRecognizer); "
            "export without --streaming for full-context decoding"
        )

    def output_lengths(self, x_lens: Tensor) -> Tensor:
        return zipformer_output_lengths(x_lens)

    def init_states(self, batch_size: int = 1, device: torch.device | str = "cpu") -> list[Tensor]:
        return [torch.from_numpy(s) for s in self.graphs.init_states(batch_size)]

    def state_batch_dims(self) -> list[int]:
        return list(self._batch_dims)

    def streaming_forward(self, x: Tensor, x_lens: Tensor, states: list[Tensor]) -> tuple[Tensor, Tensor, list[Tensor]]:
        """``x (N, T, 80)``, ``x_lens (N,)``, states -> ``(N, chunk/2, J)``, valid lengths ``(N,)``, new states.

        The graph takes no lengths: frames past ``x_lens`` are encoded as they are (as in sherpa-onnx), and
        only the returned lengths count them out."""
        if x.shape[1] != self.window_frames:
            raise ValueError(f"streaming chunk has {x.shape[1]} feature frames, the export takes {self.window_frames}")
        out, new_states = self.graphs.streaming_forward(
            x.detach().cpu().numpy(), [s.detach().cpu().numpy() for s in states]
        )
        front_end = ((x_lens - 7) // 2 - self._lookahead).clamp(min=0)
        return torch.from_numpy(out), (front_end + 1) // 2, [torch.from_numpy(s) for s in new_states]

    @property
    def streaming_feature_frames(self) -> int:
        return self.window_frames

    @property
    def streaming_feature_shift(self) -> int:
        return self.shift_frames

    def streaming_context(self) -> tuple[int, int]:
        return self.chunk_size, self.left_context_frames

    def _check_context(self, chunk_size: int, left_context_frames: int) -> None:
        if (chunk_size, left_context_frames) != self.export_context:
            raise ValueError(
                f"{self.export_dir} was exported with chunk_size {self.export_context[0]} and left_context_frames "
                f"{self.export_context[1]} (20 ms frames); got chunk_size {chunk_size} and left_context_frames "
                f"{left_context_frames}: re-export with --chunk-size {chunk_size} "
                f"--left-context-frames {left_context_frames}"
            )

    def _store_streaming(self, chunk_size: int, left_context_frames: int) -> None:
        self.chunk_size, self.left_context_frames = chunk_size, left_context_frames

    def _store_full_context(self) -> None:
        raise ValueError(
            f"{self.export_dir} is a streaming export (chunk_size {self.export_context[0]}): it cannot attend "
            "with full context; decode it with asr.OnlineRecognizer, or export without --streaming"
        )


class OnnxDecoder(nn.Module):
    """``decoder.onnx``: contexts ``(M, context_size)`` int64 (ids < 0 = no token) -> ``(M, 1, J)``."""

    def __init__(self, graphs: OnnxTransducer) -> None:
        super().__init__()
        self.graphs = graphs
        self.blank_id = graphs.blank_id
        self.context_size = graphs.context_size

    def forward(self, y: Tensor, need_pad: bool = False) -> Tensor:
        if need_pad:
            raise ValueError("the exported decoder takes exactly context_size ids per row (need_pad=False)")
        return torch.from_numpy(self.graphs.decoder_out(y.detach().cpu().numpy())).unsqueeze(1)


class OnnxJoiner(nn.Module):
    """``joiner.onnx`` over any leading shape: ``(..., J), (..., J) -> (..., vocab)``."""

    def __init__(self, graphs: OnnxTransducer) -> None:
        super().__init__()
        self.graphs = graphs
        self.encoder_proj = nn.Identity()  # the exported encoder output is already projected
        self.decoder_proj = nn.Identity()

    def forward(self, enc: Tensor, dec: Tensor, project_input: bool = False) -> Tensor:
        # The projections are identities, so project_input changes nothing.
        enc, dec = torch.broadcast_tensors(enc, dec)
        shape = enc.shape[:-1]
        if enc.numel() == 0:
            return torch.zeros(*shape, self.graphs.vocab_size)
        flat = [t.detach().cpu().reshape(-1, t.shape[-1]).contiguous().numpy() for t in (enc, dec)]
        return torch.from_numpy(self.graphs.logits(*flat)).reshape(*shape, -1)


class OnnxModel(nn.Module):
    """The exported graphs of a transducer with the interface the Recognizers use (see the module's doc).

    Attributes:
        export_dir: the directory the graphs came from.
        streaming: whether ``encoder`` is the streaming export.
        graphs: the onnxruntime sessions.
    """

    heads = ("transducer",)
    has_transducer = True

    def __init__(self, graphs: OnnxTransducer, tokenizer: Tokenizer, export_dir: Path) -> None:
        super().__init__()
        self.graphs, self.export_dir, self.streaming = graphs, export_dir, graphs.streaming
        self.encoder = OnnxStreamingEncoder(graphs, export_dir) if graphs.streaming else OnnxOfflineEncoder(graphs)
        self.decoder = OnnxDecoder(graphs)
        self.joiner = OnnxJoiner(graphs)
        self.tokenizer = tokenizer
        self.vocab_size = graphs.vocab_size
        # The Recognizers and searches place their tensors on next(model.parameters()).device: the CPU, where
        # onnxruntime's outputs arrive.
        self.device_anchor = nn.Parameter(torch.empty(0), requires_grad=False)

    def encode(self, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor]:
        """Features ``(N, T, 80)``, lengths ``(N,)`` -> encoder output ``(N, T', J)``, lengths ``(N,)``."""
        return encode_checked(self.encoder, x, x_lens)


class TokenTableTokenizer(Tokenizer):
    """Sentencepiece pieces known only by their ``tokens.txt``: text as sentencepiece's decode makes it (the
    pieces joined, ``▁`` a space; sherpa-onnx's rule, but for ``<unk>``, which it writes as the symbol);
    ``encode`` splits each word, ``▁``-prefixed, into the longest known pieces."""

    def __init__(self, tokens: dict[str, int], source: str) -> None:
        super().__init__(source)
        self._token_to_id = dict(tokens)
        self._id_to_token = {i: t for t, i in tokens.items()}
        self._longest = max(len(t) for t in tokens)

    @property
    def vocab_size(self) -> int:
        return len(self._token_to_id)

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        unknown: list[str] = []
        for word in text.split():
            rest = WORD_START + word
            while rest:
                piece = next(
                    (rest[:n] for n in range(min(self._longest, len(rest)), 0, -1) if rest[:n] in self._token_to_id),
                    None,
                )
                if piece is None:
                    unknown.append(rest[0])
                    ids.append(self.unk_id)
                    rest = rest[1:]
                    continue
                ids.append(self._token_to_id[piece])
                rest = rest[len(piece) :]
        if unknown:
            self._count_unknown(unknown)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        # As sentencepiece's decode: "▁" is a space, but none before the first character; <unk> is " ⁇ ".
        text = ""
        for i in ids:
            if i in (self.blank_id, self.sos_id):
                continue
            if i == self.unk_id:
                text += UNK_SURFACE
            else:
                piece = self._id_to_token[i].replace(WORD_START, " ")
                text += piece if text else piece.lstrip(" ")
        return text

    def id_to_token(self, token_id: int) -> str:
        if token_id not in self._id_to_token:
            raise IndexError(f"token id {token_id} out of range [0, {self.vocab_size}) of {self.source}")
        return self._id_to_token[token_id]

    def token_to_id(self, token: str) -> int:
        return self._token_to_id.get(token, self.unk_id)


def export_tokenizer(export_dir: Path, lang_dir: str | Path | None = None) -> Tokenizer:
    """The tokenizer of an export: ``lang_dir``'s (checked against ``tokens.txt``), else one of ``tokens.txt``."""
    tokens_txt = export_dir / "tokens.txt"
    tokens = read_tokens(tokens_txt)
    if lang_dir is not None:
        tokenizer = load_tokenizer(lang_dir)
        symbols = [tokenizer.id_to_token(i) for i in range(tokenizer.vocab_size)]
        if symbols != [s for s, _ in sorted(tokens.items(), key=lambda item: item[1])]:
            raise ValueError(f"lang_dir {lang_dir}: its tokens differ from {tokens_txt}")
        return tokenizer
    if any(WORD_START in symbol for symbol in tokens):
        return TokenTableTokenizer(tokens, str(tokens_txt))
    return CharTokenizer(tokens, str(tokens_txt))


def _providers(device: str | torch.device) -> list[str]:
    import onnxruntime as ort

    kind = torch.device(device).type
    if kind == "cpu":
        return ["CPUExecutionProvider"]
    if kind == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise ValueError(
        f"device {device}: this onnxruntime has the providers {ort.get_available_providers()} "
        "(the CUDA one needs onnxruntime-gpu)"
    )


def load_onnx_model(
    export_dir: str | Path,
    device: str | torch.device = "cpu",
    lang_dir: str | Path | None = None,
    int8: bool = False,
    num_threads: int = 1,
    streaming: bool | None = None,
) -> OnnxModel:
    """The transducer export in ``export_dir`` (``asr export onnx``) as an :class:`OnnxModel`.

    Args:
        export_dir: holds ``encoder.onnx``, ``decoder.onnx``, ``joiner.onnx`` (``*.int8.onnx`` with
            ``int8``) and ``tokens.txt``.
        device: ``cpu``, or ``cuda`` where onnxruntime has its CUDA provider.
        lang_dir: a tokenizer dir to decode with instead of ``tokens.txt`` (its tokens must be the same).
        num_threads: onnxruntime's intra-op threads per graph.
        streaming: True / False to require a streaming / offline export (the message names the
            Recognizer that fits); None accepts either.
    Raises:
        FileNotFoundError: a file is missing; ValueError: not a transducer export, or not the kind asked for.
    """
    export_dir = Path(export_dir)
    if not export_dir.is_dir():
        raise FileNotFoundError(f"{export_dir}: no such export directory (write one with `asr export onnx`)")
    suffix = ".int8.onnx" if int8 else ".onnx"
    if (export_dir / f"model{suffix}").is_file() and not (export_dir / f"encoder{suffix}").is_file():
        raise ValueError(f"{export_dir} holds a CTC export (model{suffix}); the onnxruntime backend runs transducers")
    missing = [name for name in [f"{g}{suffix}" for g in GRAPHS] + ["tokens.txt"] if not (export_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{export_dir}: no {', '.join(missing)} (write the export with `asr export onnx`)")
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    graphs = OnnxTransducer(export_dir, int8=int8, num_threads=num_threads, providers=_providers(device))
    if graphs.metadata.get("model_type") != "zipformer2":
        raise ValueError(
            f"{export_dir / ('encoder' + suffix)}: model_type {graphs.metadata.get('model_type')!r}, "
            "expected a zipformer2 transducer encoder"
        )
    if streaming is True and not graphs.streaming:
        raise ValueError(
            f"{export_dir} holds an offline export; asr.OnlineRecognizer needs a streaming one "
            "(asr export onnx --streaming)"
        )
    if streaming is False and graphs.streaming:
        raise ValueError(
            f"{export_dir} holds a streaming export; asr.Recognizer needs an offline one (asr export onnx "
            "without --streaming), or decode this one with asr.OnlineRecognizer"
        )
    tokenizer = export_tokenizer(export_dir, lang_dir)
    if tokenizer.vocab_size != graphs.vocab_size:
        raise ValueError(
            f"{export_dir}: the tokenizer has {tokenizer.vocab_size} tokens, the decoder {graphs.vocab_size}"
        )
    return OnnxModel(graphs, tokenizer, export_dir).eval()


def load_backend_model(
    backend: str,
    path: str | Path,
    device: str | torch.device = "cpu",
    lang_dir: str | Path | None = None,
    streaming: bool | None = None,
):
    """What a Recognizer's ``from_checkpoint`` decodes with: for ``backend="torch"`` the checkpoint's model
    (:func:`asr.checkpoint.load_model`), for ``"onnxruntime"`` the export in ``path`` (:func:`load_onnx_model`,
    one thread per graph; ``streaming`` as there)."""
    if backend == "torch":
        from asr.checkpoint import load_model

        return load_model(path, device, lang_dir)
    if backend == "onnxruntime":
        return load_onnx_model(path, device, lang_dir, streaming=streaming)
    raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")


def onnx_stream_options(model: OnnxModel, chunk_size: int | None, left_context_frames: int | None) -> tuple[int, int]:
    """The chunk and left context to stream a streaming export with: its own where not given; ``ValueError``
    naming the option where a given one differs."""
    exported_chunk, exported_left = model.encoder.export_context
    chunk_size = exported_chunk if chunk_size is None else chunk_size
    left_context_frames = exported_left if left_context_frames is None else left_context_frames
    model.encoder._check_context(chunk_size, left_context_frames)
    return chunk_size, left_context_frames
