"""onnxruntime sessions of an export directory (:mod:`asr.export.onnx`), and the export check.

:class:`OnnxTransducer` runs ``encoder.onnx`` / ``decoder.onnx`` / ``joiner.onnx`` (or their ``.int8.onnx``)
without torch: the offline encoder, the streaming encoder with its states, and greedy search (at most one
symbol per frame, as sherpa-onnx's greedy search). :func:`check_export` compares a fresh export with the
torch model it came from.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger("asr.export")

_DTYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64}


def _session(path: Path, num_threads: int, providers: list[str] | None):
    import onnxruntime as ort

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such ONNX file")
    options = ort.SessionOptions()
    options.intra_op_num_threads = num_threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])


def read_tokens_txt(path: Path) -> list[str]:
    """Symbols of a ``tokens.txt`` by id."""
    pairs = [line.rsplit(maxsplit=1) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    symbols = [""] * len(pairs)
    for symbol, token_id in pairs:
        symbols[int(token_id)] = symbol
    return symbols


class OnnxTransducer:
    """The three graphs of a transducer export.

    Args:
        export_dir: what ``asr export onnx`` wrote.
        int8: load the ``*.int8.onnx`` files.
        num_threads: intra-op threads per session.
        providers: onnxruntime execution providers (default CPU).
    """

    def __init__(
        self, export_dir: str | Path, int8: bool = False, num_threads: int = 1, providers: list[str] | None = None
    ) -> None:
        export_dir = Path(export_dir)
        suffix = ".int8.onnx" if int8 else ".onnx"
        self.encoder = _session(export_dir / f"encoder{suffix}", num_threads, providers)
        self.decoder = _session(export_dir / f"decoder{suffix}", num_threads, providers)
        self.joiner = _session(export_dir / f"joiner{suffix}", num_threads, providers)
        self.metadata = self.encoder.get_modelmeta().custom_metadata_map
        decoder_metadata = self.decoder.get_modelmeta().custom_metadata_map
        self.context_size = int(decoder_metadata["context_size"])
        self.vocab_size = int(decoder_metadata["vocab_size"])
        self.blank_id = 0
        self.streaming = "T" in self.metadata
        self.tokens = read_tokens_txt(export_dir / "tokens.txt") if (export_dir / "tokens.txt").is_file() else None
        if self.streaming:
            self.window_frames = int(self.metadata["T"])
            self.shift_frames = int(self.metadata["decode_chunk_len"])
        self._encoder_inputs = [i.name for i in self.encoder.get_inputs()]
        self._encoder_outputs = [o.name for o in self.encoder.get_outputs()]

    # -- encoder ------------------------------------------------------------------------------------------
    def encode(self, x: np.ndarray, x_lens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Offline export: ``x (N, T, 80)`` float32, ``x_lens (N,)`` -> ``(N, T', J)``, ``(N,)``."""
        if self.streaming:
            raise RuntimeError("this is a streaming export; use streaming_forward")
        out, lens = self.encoder.run(None, {"x": x.astype(np.float32), "x_lens": np.asarray(x_lens, dtype=np.int64)})
        return out, lens

    def init_states(self, batch_size: int = 1) -> list[np.ndarray]:
        """Zero states of the streaming encoder for ``batch_size`` streams (shapes from the graph's inputs)."""
        if not self.streaming:
            raise RuntimeError("this is an offline export; it has no states")
        states = []
        for entry in self.encoder.get_inputs()[1:]:
            shape = [d if isinstance(d, int) else batch_size for d in entry.shape]
            states.append(np.zeros(shape, dtype=_DTYPES[entry.type]))
        return states

    def streaming_forward(self, x: np.ndarray, states: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """One window ``x (N, T, 80)`` (``T`` = metadata ``T``) -> ``encoder_out (N, chunk/2, J)`` and new states."""
        feeds = dict(zip(self._encoder_inputs, [x.astype(np.float32), *states]))
        out, *new_states = self.encoder.run(self._encoder_outputs, feeds)
        return out, new_states

    # -- decoder, joiner, search --------------------------------------------------------------------------
    def decoder_out(self, y: np.ndarray) -> np.ndarray:
        """``y (N, context_size)`` int64 -> ``(N, J)``."""
        return self.decoder.run(None, {"y": np.asarray(y, dtype=np.int64)})[0]

    def logits(self, encoder_out: np.ndarray, decoder_out: np.ndarray) -> np.ndarray:
        """``(N, J), (N, J)`` -> ``(N, vocab)``."""
        return self.joiner.run(None, {"encoder_out": encoder_out, "decoder_out": decoder_out})[0]

    def start_context(self) -> list[int]:
        return [-1] * (self.context_size - 1) + [self.blank_id]

    def greedy_search(self, encoder_out: np.ndarray, context: list[int] | None = None) -> tuple[list[int], list[int]]:
        """Greedy search over one utterance's frames ``(T', J)``, at most one symbol per frame. ``context`` (the
        last ``context_size`` symbols, default the start) is continued, so a stream can search chunk by chunk.
        Returns the new tokens and the final context."""
        context = list(context or self.start_context())
        decoder_out = self.decoder_out(np.array([context]))
        tokens = []
        for frame in encoder_out:
            best = int(self.logits(frame[None], decoder_out)[0].argmax())
            if best != self.blank_id:
                tokens.append(best)
                context = context[1:] + [best]
                decoder_out = self.decoder_out(np.array([context]))
        return tokens, context

    def decode_streaming(self, features: np.ndarray, num_windows: int | None = None) -> list[int]:
        """Tokens of one utterance's ``features (T, 80)`` run window by window (as sherpa-onnx does: windows of
        ``T`` frames every ``decode_chunk_len``; by default as many as fit)."""
        if num_windows is None:
            num_windows = max(0, (len(features) - self.window_frames) // self.shift_frames + 1)
        states = self.init_states(1)
        tokens, context = [], None
        for k in range(num_windows):
            window = features[k * self.shift_frames : k * self.shift_frames + self.window_frames]
            encoder_out, states = self.streaming_forward(window[None], states)
            new_tokens, context = self.greedy_search(encoder_out[0], context)
            tokens += new_tokens
        return tokens

    def decode(self, features: np.ndarray) -> list[int]:
        """Tokens of one utterance's ``features (T, 80)`` through the offline export."""
        encoder_out, lens = self.encode(features[None], np.array([len(features)]))
        return self.greedy_search(encoder_out[0, : int(lens[0])])[0]


# ---- the export check ------------------------------------------------------------------------------------
def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max()) if a.size else 0.0


def _allowed(reference: np.ndarray, tolerance: float) -> float:
    return tolerance * max(1.0, float(np.abs(reference).max()) if reference.size else 0.0)


def _compare(name: str, torch_out, onnx_out, diffs: dict[str, float], tolerance: float | None) -> None:
    reference = torch_out.detach().numpy() if hasattr(torch_out, "detach") else np.asarray(torch_out)
    if reference.shape != onnx_out.shape:
        raise _check_error(f"{name}: onnxruntime gives shape {onnx_out.shape}, torch {reference.shape}")
    diff = _max_abs(reference, onnx_out)
    diffs[name] = max(diffs.get(name, 0.0), diff)
    if tolerance is not None and not diff <= _allowed(reference, tolerance):
        raise _check_error(
            f"{name}: onnxruntime and torch differ by {diff:.3g} (max abs), "
            f"more than {_allowed(reference, tolerance):.3g}"
        )


def _check_error(message: str):
    from asr.export.onnx import ExportError

    return ExportError(f"export check failed, nothing written: {message}")


def check_export(
    model, export_dir: Path, head: str, streaming: bool, tolerance: float, seed: int = 0
) -> tuple[dict[str, float], dict[str, float]]:
    """Run random inputs through the torch model and the exported graphs; raise ``ExportError`` naming the
    output where they differ by more than ``tolerance`` times ``max(1, max |torch output|)``.

    Streaming: 2 streams, 4 windows in a row with the states carried (every state compared too). Offline: a
    padded batch of 3 lengths (valid frames compared; lengths must be equal). Decoder: the start context and
    random contexts; joiner: random inputs. The ``*.int8.onnx`` files, where present, are run on the same
    inputs and their differences returned without a tolerance (quantization changes the numbers).

    Returns:
        max abs differences per output for the fp32 graphs, and for the int8 graphs.
    """
    import torch

    from asr.export.onnx import CtcGraph, DecoderGraph, JoinerGraph, OfflineEncoderGraph, StreamingEncoderGraph

    generator = torch.Generator().manual_seed(seed)
    results = []
    for int8 in (False, True):
        suffix = ".int8.onnx" if int8 else ".onnx"
        if int8 and not (export_dir / ("model" if head == "ctc" else "encoder")).with_suffix(suffix).is_file():
            results.append({})
            continue
        limit = None if int8 else tolerance
        diffs: dict[str, float] = {}
        if head == "ctc":
            session = _session(export_dir / f"model{suffix}", 1, None)
            _check_offline(CtcGraph(model), session, generator, diffs, limit, "log_probs")
            results.append(diffs)
            continue
        ort_model = OnnxTransducer(export_dir, int8=int8)
        if streaming:
            _check_streaming(StreamingEncoderGraph(model), ort_model, generator, diffs, limit)
        else:
            with model.encoder.full_context():
                _check_offline(OfflineEncoderGraph(model), ort_model.encoder, generator, diffs, limit, "encoder_out")
        vocab, context = model.vocab_size, model.decoder.context_size
        y = torch.randint(0, vocab, (4, context), generator=generator)
        y[0, :-1], y[0, -1] = -1, 0  # the start context, whose -1 ids the decoder masks
        _compare("decoder_out", DecoderGraph(model)(y), ort_model.decoder_out(y.numpy()), diffs, limit)
        joiner_dim = model.joiner.output_linear.in_features
        e, d = torch.randn(5, joiner_dim, generator=generator), torch.randn(5, joiner_dim, generator=generator)
        _compare("logit", JoinerGraph(model)(e, d), ort_model.logits(e.numpy(), d.numpy()), diffs, limit)
        results.append(diffs)
    fp32, int8 = results
    log.info("torch vs onnxruntime, max abs difference: %s", ", ".join(f"{k} {v:.2g}" for k, v in fp32.items()))
    if int8:
        log.info(
            "torch vs int8 onnxruntime, max abs difference: %s", ", ".join(f"{k} {v:.2g}" for k, v in int8.items())
        )
    return fp32, int8


def _features(shape: tuple[int, ...], generator):
    """Random log-mel-like values ``shape``: around -8 with a spread of a few units (a torch tensor)."""
    import torch

    return torch.randn(shape, generator=generator) * 2.0 - 8.0


def _check_offline(graph, session, generator, diffs, limit, output_name: str) -> None:
    import torch

    lengths = torch.tensor([317, 96, 211])
    x = _features((3, int(lengths.max()), 80), generator)
    with torch.no_grad():
        reference, reference_lens = graph(x, lengths)
    out, out_lens = session.run(None, {"x": x.numpy(), "x_lens": lengths.numpy()})
    if not np.array_equal(out_lens, reference_lens.numpy()):
        raise _check_error(f"output lengths: onnxruntime {out_lens.tolist()}, torch {reference_lens.tolist()}")
    for i, n in enumerate(reference_lens.tolist()):
        _compare(output_name, reference[i, :n], out[i, :n], diffs, limit)


def _check_streaming(graph, ort_model: OnnxTransducer, generator, diffs, limit, num_windows: int = 4) -> None:
    import torch

    names = ["encoder_out"] + [o.name for o in ort_model.encoder.get_outputs()[1:]]
    torch_states = [torch.from_numpy(s) for s in ort_model.init_states(2)]
    onnx_states = ort_model.init_states(2)
    for _ in range(num_windows):
        x = _features((2, ort_model.window_frames, 80), generator)
        with torch.no_grad():
            reference = graph(x, *torch_states)
        out, onnx_states = ort_model.streaming_forward(x.numpy(), onnx_states)
        for name, ref, got in zip(names, reference, [out, *onnx_states]):
            _compare(name if name == "encoder_out" else "states", ref, got, diffs, limit)
        # Each side carries its own states, as a deployment would.
        torch_states = list(reference[1:])
