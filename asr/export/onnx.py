"""ONNX export of Zipformer transducer and CTC models in sherpa-onnx's layout.

Layout (names, dtypes and metadata keys as sherpa-onnx's loaders read them; ``N`` is a dynamic batch axis):

* streaming ``encoder.onnx`` (sherpa feeds its inputs by position): ``x (N, T, 80)`` float32, then per
  layer ``cached_key_i (L, N, heads·query_head_dim)``, ``cached_nonlin_attn_i (1, N, L, 3·dim/4)``,
  ``cached_val1_i`` and ``cached_val2_i (L, N, heads·value_head_dim)``, ``cached_conv1_i`` and
  ``cached_conv2_i (N, dim, kernel//2)`` (``L`` = left context / the stack's downsampling), then
  ``embed_states (N, 128, 3, 19)`` and ``processed_lens (N,)`` int64; outputs ``encoder_out (N, chunk/2,
  joiner_dim)`` (already through the joiner's ``encoder_proj``) and ``new_<state>`` in the same order.
  ``T = 2·chunk + 13`` with the front end's ConvNeXt, ``2·chunk + 7`` without (zipformer-xs). sherpa
  allocates the front-end cache as ``(N, 128, 3, 19)`` whatever the model; a model's own cache
  ``(N, C, pad, 19)`` (``C <= 128``) lives in the first ``C`` channels and ``pad`` frames of that slot, and a
  front end without ConvNeXt (``pad = 0``) passes the slot through untouched.
  Metadata: ``model_type=zipformer2``, ``decode_chunk_len`` (feature frames one call consumes), ``T``,
  comma lists per stack ``num_encoder_layers``, ``encoder_dims``, ``cnn_module_kernels``,
  ``left_context_len``, ``query_head_dims``, ``value_head_dims``, ``num_heads``.
* offline ``encoder.onnx``: ``x (N, T, 80)``, ``x_lens (N,)`` int64 -> ``encoder_out (N, T', joiner_dim)``,
  ``encoder_out_lens (N,)``; metadata ``model_type=zipformer2``.
* ``decoder.onnx``: ``y (N, context_size)`` int64 (ids < 0 = no token) -> ``decoder_out (N, joiner_dim)``
  (through ``decoder_proj``); metadata ``context_size``, ``vocab_size``.
* ``joiner.onnx``: ``encoder_out (N, joiner_dim)``, ``decoder_out (N, joiner_dim)`` -> ``logit (N, vocab)``;
  metadata ``joiner_dim``.
* CTC ``model.onnx``: ``x``, ``x_lens`` -> ``log_probs (N, T', vocab)``, ``log_probs_len (N,)``; metadata
  ``model_type=zipformer2_ctc``.
* ``tokens.txt``: ``<symbol> <id>`` lines, ``<blk>`` at 0.

Every file is written into a temporary directory beside the output, checked against the torch model
(:func:`check_export`), and only then moved into place: a failed check leaves nothing to deploy.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from asr.encoders.zipformer import STATES_PER_LAYER, ZipformerEncoder
from asr.models import AsrModel
from asr.models.transducer import Decoder

log = logging.getLogger("asr.export")

# ONNX opset of every graph: new enough for every op the Zipformer needs, old enough for the onnxruntime
# that sherpa-onnx bundles.
OPSET = 17
# sherpa-onnx allocates the streaming front end's cache as (N, 128, 3, F') whatever the model.
SHERPA_EMBED_CHANNELS = 128
SHERPA_EMBED_FRAMES = 3
# Default torch-vs-onnxruntime tolerance of the export check: max abs difference, relative to the
# largest magnitude of the torch output where that exceeds 1.
DEFAULT_TOLERANCE = 1e-4
# The heads sherpa-onnx has a layout for (an attention decoder has none).
HEADS = ("transducer", "ctc")


class ExportError(ValueError):
    """A model or option that cannot be exported, or an export whose check failed; the message says which."""


@dataclass
class ExportResult:
    """What :func:`export_onnx` wrote and what its check measured."""

    files: list[Path]
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    int8_max_abs_diff: dict[str, float] = field(default_factory=dict)


# ---- graphs -------------------------------------------------------------------------------------------
class StreamingEncoderGraph(nn.Module):
    """One chunk of a causal Zipformer with the caches as explicit tensors, in sherpa-onnx's order."""

    def __init__(self, model: AsrModel) -> None:
        super().__init__()
        self.encoder: ZipformerEncoder = model.encoder
        self.encoder_proj = model.joiner.encoder_proj
        embed = self.encoder.encoder_embed
        self.embed_channels = embed.layer3_channels
        self.embed_frames = embed.convnext_lookahead
        self.num_layer_states = sum(self.encoder.encoder.num_encoder_layers) * STATES_PER_LAYER

    def forward(self, x: Tensor, *states: Tensor) -> tuple[Tensor, ...]:
        """``x`` ``(N, T, F)`` and the states of :func:`streaming_state_names` -> ``encoder_out (N, chunk / 2,
        joiner_dim)`` and the new states in the same order."""
        layer_states = list(states[: self.num_layer_states])
        embed_slot, processed_lens = states[self.num_layer_states :]
        # sherpa gives no lengths: every frame of a window is valid (its end of stream is padding it made).
        x_lens = torch.zeros_like(processed_lens) + x.size(1)
        embed_cache = embed_slot[:, : self.embed_channels, : self.embed_frames]
        y, _, new_states = self.encoder.streaming_forward(x, x_lens, layer_states + [embed_cache, processed_lens])
        new_embed_cache, new_processed_lens = new_states[-2:]
        if self.embed_frames == 0:
            new_embed_slot = embed_slot
        else:
            pad_frames = SHERPA_EMBED_FRAMES - self.embed_frames
            pad_channels = SHERPA_EMBED_CHANNELS - self.embed_channels
            new_embed_slot = nn.functional.pad(new_embed_cache, (0, 0, 0, pad_frames, 0, pad_channels))
        return (self.encoder_proj(y), *new_states[:-2], new_embed_slot, new_processed_lens)


class OfflineEncoderGraph(nn.Module):
    """The full-context encoder and the joiner's ``encoder_proj``: ``(N, T, F), (N,) -> (N, T', J), (N,)``."""

    def __init__(self, model: AsrModel) -> None:
        super().__init__()
        self.encoder = model.encoder
        self.encoder_proj = model.joiner.encoder_proj

    def forward(self, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor]:
        y, y_lens = self.encoder(x, x_lens)
        return self.encoder_proj(y), y_lens


class CtcGraph(nn.Module):
    """The full-context encoder and the CTC head: ``(N, T, F), (N,) -> (N, T', V)`` log-probs, ``(N,)``."""

    def __init__(self, model: AsrModel) -> None:
        super().__init__()
        self.encoder = model.encoder
        self.ctc_output = model.ctc_output

    def forward(self, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor]:
        y, y_lens = self.encoder(x, x_lens)
        return self.ctc_output(y), y_lens


class DecoderGraph(nn.Module):
    """``y (N, context_size)`` int64 -> ``decoder_out (N, joiner_dim)``."""

    def __init__(self, model: AsrModel) -> None:
        super().__init__()
        self.decoder = model.decoder
        self.decoder_proj = model.joiner.decoder_proj

    def forward(self, y: Tensor) -> Tensor:
        return self.decoder_proj(self.decoder(y, need_pad=False).squeeze(1))


class JoinerGraph(nn.Module):
    """Projected ``encoder_out (N, J)``, ``decoder_out (N, J)`` -> ``logit (N, vocab)``."""

    def __init__(self, model: AsrModel) -> None:
        super().__init__()
        self.joiner = model.joiner

    def forward(self, encoder_out: Tensor, decoder_out: Tensor) -> Tensor:
        return self.joiner(encoder_out, decoder_out, project_input=False)


# ---- names and metadata --------------------------------------------------------------------------------
STATE_NAMES = ("cached_key", "cached_nonlin_attn", "cached_val1", "cached_val2", "cached_conv1", "cached_conv2")


def streaming_state_names(encoder: ZipformerEncoder) -> list[str]:
    """The state inputs of the streaming encoder, in order (outputs are ``new_`` + these)."""
    num_layers = sum(encoder.encoder.num_encoder_layers)
    return [f"{name}_{i}" for i in range(num_layers) for name in STATE_NAMES] + ["embed_states", "processed_lens"]


def _join(values) -> str:
    return ",".join(str(int(v)) for v in values)


def streaming_metadata(encoder: ZipformerEncoder) -> dict[str, str]:
    """The streaming encoder's metadata, under the chunk and left context the encoder is set to."""
    stacks = encoder.encoder
    return {
        "model_type": "zipformer2",
        "version": "1",
        "model_author": "asr",
        "comment": "streaming zipformer2",
        "decode_chunk_len": str(encoder.streaming_feature_shift),
        "T": str(encoder.streaming_feature_frames),
        "num_encoder_layers": _join(stacks.num_encoder_layers),
        "encoder_dims": _join(stacks.encoder_dim),
        "cnn_module_kernels": _join(stacks.cnn_module_kernel),
        "left_context_len": _join(encoder.left_context_frames // ds for ds in stacks.downsampling_factor),
        "query_head_dims": _join(stacks.query_head_dim),
        "value_head_dims": _join(stacks.value_head_dim),
        "num_heads": _join(stacks.num_heads),
        # Ours, not read by sherpa-onnx: the setting in the model's own units (50 Hz frames).
        "chunk_size": str(encoder.chunk_size),
        "left_context_frames": str(encoder.left_context_frames),
    }


def add_metadata(path: Path, metadata: dict[str, str]) -> None:
    import onnx

    model = onnx.load(str(path))
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file, as a dict."""
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


# ---- checks before writing -----------------------------------------------------------------------------
def _check_exportable(model: AsrModel, head: str, streaming: bool) -> None:
    """Raise :class:`ExportError` for what sherpa-onnx's layout cannot hold (before any file is written)."""
    encoder = model.encoder
    name = (getattr(model, "build_config", None) or {}).get("encoder_name", type(encoder).__name__)
    if not isinstance(encoder, ZipformerEncoder):
        raise ExportError(
            f"the {name} encoder ({type(encoder).__name__}) does not export to ONNX; only Zipformer models do"
        )
    if head not in HEADS:
        raise ExportError(f"head must be one of {HEADS} (sherpa-onnx's layouts), got {head!r}")
    if head not in model.heads:
        raise ExportError(f"the model has no {head} head (it has {', '.join(model.heads)})")
    if getattr(model, "tokenizer", None) is None:
        raise ExportError("the checkpoint holds no tokenizer (tokens.txt is part of the export); pass --lang-dir")
    if head == "transducer" and not isinstance(model.decoder, Decoder):
        raise ExportError(
            f"the transducer's prediction network ({type(model.decoder).__name__}) does not export; "
            "only the stateless decoder does"
        )
    if encoder.encoder.output_downsampling_factor != 2 or encoder.config.feature_dim != 80:
        raise ExportError("sherpa-onnx needs 80-dim fbank input and output downsampling 2")
    if streaming:
        if head == "ctc":
            raise ExportError("streaming export is for transducers; a CTC model exports offline only")
        if not encoder.causal:
            raise ExportError("--streaming needs a model built causal (streaming); this one is full-context")
        embed = encoder.encoder_embed
        if embed.convnext_lookahead and (
            embed.layer3_channels > SHERPA_EMBED_CHANNELS or embed.convnext_lookahead > SHERPA_EMBED_FRAMES
        ):
            raise ExportError(
                f"the front end's cache ({embed.layer3_channels} channels, {embed.convnext_lookahead} frames) "
                f"does not fit sherpa-onnx's ({SHERPA_EMBED_CHANNELS}, {SHERPA_EMBED_FRAMES})"
            )


# ---- export --------------------------------------------------------------------------------------------
def _torch_onnx_export(module: nn.Module, args: tuple, path: Path, input_names, output_names, dynamic_axes) -> None:
    # The TorchScript-based exporter (dynamo=False), as icefall's export scripts use: it traces the eager
    # forward that decoding runs, and the example inputs below are chosen so the trace takes the general
    # path of every Python branch. torch >= 2.9 defaults to the dynamo exporter (torch.export), which broke
    # icefall's scripts (icefall issue 2040) and, on torch 2.13, refuses our offline encoder with a dynamic
    # time axis (a guard on data: the padded-batch check in zipformer's _fill_past_end).
    torch.onnx.export(
        module,
        args,
        str(path),
        input_names=list(input_names),
        output_names=list(output_names),
        dynamic_axes=dynamic_axes,
        opset_version=OPSET,
        dynamo=False,
    )


@contextmanager
def _quiet_tracer() -> Iterator[None]:
    """Tracer warnings name every Python int the trace fixes; the export check below is what proves the graph."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module="torch.onnx")
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message="The feature will be removed", category=DeprecationWarning)
        yield


def _export_streaming_encoder(model: AsrModel, path: Path) -> None:
    encoder: ZipformerEncoder = model.encoder
    graph = StreamingEncoderGraph(model).eval()
    batch_size = 2  # not 1: a trace at batch 1 may fix the batch axis in a reshape
    states = encoder.init_states(batch_size)
    states[-2] = torch.zeros(batch_size, SHERPA_EMBED_CHANNELS, SHERPA_EMBED_FRAMES, encoder.encoder_embed.out_width)
    states[-1] = torch.tensor([0, 3 * encoder.chunk_size], dtype=torch.int64)
    x = torch.randn(batch_size, encoder.streaming_feature_frames, encoder.config.feature_dim)
    names = streaming_state_names(encoder)
    axes = {"x": {0: "N"}, "encoder_out": {0: "N"}}
    for name, batch_dim in zip(names, encoder.state_batch_dims()):
        axes[name] = axes[f"new_{name}"] = {batch_dim: "N"}
    with _quiet_tracer():
        _torch_onnx_export(
            graph, (x, *states), path, ["x", *names], ["encoder_out", *(f"new_{n}" for n in names)], axes
        )
    add_metadata(path, streaming_metadata(encoder))


def _offline_example(encoder: ZipformerEncoder) -> tuple[Tensor, Tensor]:
    # Two utterances of different lengths: a batch with padding takes every padding branch of the
    # forward, so the trace holds the general path (right for unpadded input too).
    x = torch.randn(2, 203, encoder.config.feature_dim)
    return x, torch.tensor([203, 151], dtype=torch.int64)


def _export_offline(graph: nn.Module, encoder: ZipformerEncoder, path: Path, outputs: tuple[str, str]) -> None:
    x, x_lens = _offline_example(encoder)
    axes = {"x": {0: "N", 1: "T"}, "x_lens": {0: "N"}, outputs[0]: {0: "N", 1: "T"}, outputs[1]: {0: "N"}}
    with _quiet_tracer(), encoder.full_context():
        _torch_onnx_export(graph.eval(), (x, x_lens), path, ["x", "x_lens"], outputs, axes)


def _export_decoder(model: AsrModel, path: Path) -> None:
    decoder = model.decoder
    y = torch.tensor([[-1] * (decoder.context_size - 1) + [0], [1] * decoder.context_size], dtype=torch.int64)
    with _quiet_tracer():
        _torch_onnx_export(
            DecoderGraph(model).eval(), (y,), path, ["y"], ["decoder_out"], {"y": {0: "N"}, "decoder_out": {0: "N"}}
        )
    add_metadata(path, {"context_size": str(decoder.context_size), "vocab_size": str(model.vocab_size)})


def _export_joiner(model: AsrModel, path: Path) -> None:
    joiner_dim = model.joiner.output_linear.in_features
    e, d = torch.randn(2, joiner_dim), torch.randn(2, joiner_dim)
    axes = {"encoder_out": {0: "N"}, "decoder_out": {0: "N"}, "logit": {0: "N"}}
    with _quiet_tracer():
        _torch_onnx_export(JoinerGraph(model).eval(), (e, d), path, ["encoder_out", "decoder_out"], ["logit"], axes)
    add_metadata(path, {"joiner_dim": str(joiner_dim)})


def write_tokens(model: AsrModel, path: Path) -> None:
    """``tokens.txt``: one ``<symbol> <id>`` line per id, blank at 0."""
    tokenizer = model.tokenizer
    symbols = [tokenizer.id_to_token(i) for i in range(tokenizer.vocab_size)]
    bad = [s for s in symbols if not s or any(ch.isspace() for ch in s)]
    if bad:
        raise ExportError(f"token symbols {bad[:5]} are empty or hold whitespace; tokens.txt cannot list them")
    path.write_text("".join(f"{s} {i}\n" for i, s in enumerate(symbols)), encoding="utf-8")


def quantize_int8(path: Path) -> Path:
    """``X.int8.onnx`` beside ``X.onnx``: onnxruntime's dynamic quantization of the MatMul weights to int8
    (as icefall's export scripts do), with a scale per output channel; the metadata is kept."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = path.with_suffix(".int8.onnx")
    # The quantizer logs a line per tensor on the root logger at INFO; only its warnings and errors pass.
    previous = logging.root.manager.disable
    logging.disable(logging.INFO)
    try:
        # Per output channel: on the synth test split it moved the int8 WER from +0.25 to -0.16 points of
        # fp32's (streaming export), at 2% more bytes than one scale per tensor.
        quantize_dynamic(
            model_input=str(path),
            model_output=str(out),
            op_types_to_quantize=["MatMul"],
            weight_type=QuantType.QInt8,
            per_channel=True,
        )
    finally:
        logging.disable(previous)
    return out


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as error:
        raise ExportError(f"ONNX export needs onnx and onnxruntime ({error}); pip install 'asr[export]'") from None


def export_onnx(
    model: AsrModel,
    out_dir: str | Path,
    streaming: bool = False,
    chunk_size: int | None = None,
    left_context_frames: int | None = None,
    head: str | None = None,
    int8: bool = False,
    tolerance: float = DEFAULT_TOLERANCE,
) -> ExportResult:
    """Write ``model`` (with ``model.tokenizer``) to ``out_dir`` in sherpa-onnx's layout and check it.

    Args:
        model: a Zipformer :class:`AsrModel` in eval mode, e.g. from :func:`asr.load_model`.
        out_dir: created if missing; existing files of the same names are replaced.
        streaming: the chunk-by-chunk encoder with caches (a causal model), else the full-context one.
        chunk_size / left_context_frames: with ``streaming``, in 50 Hz frames (default: the model's).
        head: ``"transducer"`` (default where the model has one) or ``"ctc"``.
        int8: also write ``*.int8.onnx`` (dynamic int8 quantization).
        tolerance: the largest torch-vs-onnxruntime difference the check accepts (see :func:`check_export`).
    Raises:
        ExportError: before writing anything for a model or option that cannot export; after the check
            (nothing moved into ``out_dir``) when onnxruntime and torch disagree.
    """
    _require_onnx()
    head = head or next((h for h in HEADS if h in model.heads), "transducer")
    if not streaming and (chunk_size is not None or left_context_frames is not None):
        raise ExportError("--chunk-size and --left-context-frames need --streaming")
    _check_exportable(model, head, streaming)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"--out-dir {out_dir} exists and is not a directory")
    model = model.eval()
    encoder: ZipformerEncoder = model.encoder
    with _streaming_setting(encoder, streaming, chunk_size, left_context_frames), torch.no_grad():
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".export-", dir=out_dir) as tmp:
            work = Path(tmp)
            write_tokens(model, work / "tokens.txt")
            if head == "ctc":
                _export_offline(CtcGraph(model), encoder, work / "model.onnx", ("log_probs", "log_probs_len"))
                add_metadata(work / "model.onnx", _ctc_metadata())
                graphs = [work / "model.onnx"]
            else:
                if streaming:
                    _export_streaming_encoder(model, work / "encoder.onnx")
                else:
                    _export_offline(
                        OfflineEncoderGraph(model), encoder, work / "encoder.onnx", ("encoder_out", "encoder_out_lens")
                    )
                    add_metadata(work / "encoder.onnx", _offline_metadata())
                _export_decoder(model, work / "decoder.onnx")
                _export_joiner(model, work / "joiner.onnx")
                graphs = [work / f"{name}.onnx" for name in ("encoder", "decoder", "joiner")]
            if int8:
                graphs += [quantize_int8(path) for path in list(graphs)]
            from asr.export.onnxruntime import check_export

            diffs, int8_diffs = check_export(model, work, head=head, streaming=streaming, tolerance=tolerance)
            files = []
            for path in [work / "tokens.txt", *graphs]:
                target = out_dir / path.name
                shutil.move(str(path), str(target))
                files.append(target)
    return ExportResult(files, diffs, int8_diffs)


def _offline_metadata() -> dict[str, str]:
    return {"model_type": "zipformer2", "version": "1", "model_author": "asr", "comment": "non-streaming zipformer2"}


def _ctc_metadata() -> dict[str, str]:
    return {"model_type": "zipformer2_ctc", "version": "1", "model_author": "asr", "comment": "zipformer2 CTC"}


def _streaming_setting(
    encoder: ZipformerEncoder, streaming: bool, chunk_size: int | None, left_context_frames: int | None
) -> AbstractContextManager:
    """The chunk and left context to export with, validated now (before any file is written), set inside
    the returned block and restored after it; a no-op offline."""
    if not streaming:
        return nullcontext()
    chunk_size = encoder.chunk_size if chunk_size is None else chunk_size
    if chunk_size <= 0:
        raise ExportError("the model has no streaming chunk size set; pass --chunk-size")
    try:
        with encoder.streaming(chunk_size, left_context_frames):
            encoder._check_streaming()
    except ValueError as error:
        raise ExportError(f"--chunk-size {chunk_size} / --left-context-frames {left_context_frames}: {error}") from None
    return encoder.streaming(chunk_size, left_context_frames)
