"""icefall checkpoints as :class:`AsrModel` s: the whole model (encoder, transducer and CTC heads).

An icefall Zipformer recipe's ``model`` state dict holds ``encoder_embed.*`` and ``encoder.*`` (the
encoder), ``decoder.*``, ``joiner.*``, ``simple_am_proj.*``, ``simple_lm_proj.*`` (the transducer) and
``ctc_output.*`` (the CTC head). Our parameter names follow icefall's, so the mapping is only a prefix: the
encoder's entries go under ``encoder.`` (``encoder_embed.X -> encoder.encoder_embed.X``, ``encoder.X ->
encoder.encoder.X``), the heads' map 1:1. The head sizes are read from the tensors (see
:func:`head_config`) and every entry is loaded strictly, so a converted model computes what icefall's does.

Entries of modules we do not have (icefall's ``attention_decoder.*``, say) are an error naming them; drop
them with ``ignore`` (``asr convert icefall --ignore attention_decoder``), which also drops a head that is
not wanted (``--ignore ctc_output``).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterable
from typing import Any

import torch

from asr.models.asr_model import HEADS, AsrModel
from asr.models.build import build_model

ENCODER_PREFIXES = ("encoder_embed.", "encoder.")
# Top-level icefall module -> the head of ours it belongs to.
HEAD_MODULES = {
    "decoder": "transducer",
    "joiner": "transducer",
    "simple_am_proj": "transducer",
    "simple_lm_proj": "transducer",
    "ctc_output": "ctc",
}

__all__ = ["ENCODER_PREFIXES", "HEAD_MODULES", "convert_icefall", "head_config", "read_icefall_checkpoint"]


def _first_line(error: BaseException) -> str:
    """The first sentence of an exception's message (torch's load errors run to several paragraphs)."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text.split(". ")[0].rstrip(".")


def read_icefall_checkpoint(path: str | os.PathLike, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The model state dict of an icefall checkpoint file, with a DDP ``module.`` prefix removed.

    The file is a dict with a ``"model"`` state dict (``pretrained.pt``, ``epoch-N.pt``) or such a state
    dict itself. Only tensors are unpickled unless ``trust_pickle`` (icefall's training checkpoints also
    hold their ``params`` objects; unpickling those runs code from the file).
    """
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as err:
        if trust_pickle:
            raise ValueError(f"{path}: cannot read checkpoint: {_first_line(err)}") from err
        raise ValueError(
            f"{path}: the checkpoint holds Python objects besides tensors (if you trust the file, add --trust-pickle)"
        ) from err
    except Exception as err:  # torch raises several types for a truncated or foreign file
        raise ValueError(
            f"{path}: cannot read checkpoint (truncated, or not a PyTorch file): "
            f"{type(err).__name__}: {_first_line(err)}"
        ) from err
    if isinstance(checkpoint, dict) and checkpoint.get("format") in ("asr-model", "asr-train"):
        raise ValueError(f"{path} is already an asr checkpoint (format={checkpoint['format']!r})")
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: no 'model' state dict of tensors found")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _matches(key: str, prefix: str) -> bool:
    prefix = prefix.rstrip(".")
    return key == prefix or key.startswith(prefix + ".")


def _dim(state: dict[str, torch.Tensor], candidates: Iterable[tuple[str, int]]) -> int | None:
    """The size of the first present tensor of ``(key, dim)`` candidates."""
    for key, dim in candidates:
        if key in state and state[key].ndim > dim:
            return int(state[key].shape[dim])
    return None


def head_config(state: dict[str, torch.Tensor], source: str = "input") -> dict[str, Any]:
    """Heads and head sizes of an icefall state dict: ``{"heads", "vocab_size"}`` plus, with a transducer,
    ``decoder_dim``, ``joiner_dim``, ``context_size``.

    The vocabulary size is the rows of ``decoder.embedding.weight`` (else ``ctc_output.1.weight``), the
    decoder dim its columns, the joiner dim the rows of ``joiner.encoder_proj.weight``, the context size the
    kernel of ``decoder.conv.weight`` (icefall's stateless decoder has no conv for context 1). Where such a
    tensor is missing another one that has the size is used, so that the strict load names what is missing.
    """
    modules = {key.split(".")[0] for key in state}
    heads = [head for head in HEADS if any(HEAD_MODULES.get(m) == head for m in modules)]
    if not heads:
        raise ValueError(f"{source}: no head entries ({', '.join(f'{m}.*' for m in HEAD_MODULES)})")
    vocab = _dim(
        state,
        [
            ("decoder.embedding.weight", 0),
            ("ctc_output.1.weight", 0),
            ("joiner.output_linear.weight", 0),
            ("simple_am_proj.weight", 0),
            ("simple_lm_proj.weight", 0),
            ("ctc_output.1.bias", 0),
        ],
    )
    if vocab is None:
        raise ValueError(
            f"{source}: cannot tell the vocabulary size: no decoder.embedding.weight or ctc_output.1.weight"
        )
    config: dict[str, Any] = {"heads": heads, "vocab_size": vocab}
    if "transducer" in heads:
        decoder_dim = _dim(
            state,
            [
                ("decoder.embedding.weight", 1),
                ("simple_lm_proj.weight", 1),
                ("joiner.decoder_proj.weight", 1),
                ("decoder.conv.weight", 0),
            ],
        )
        joiner_dim = _dim(
            state,
            [("joiner.encoder_proj.weight", 0), ("joiner.decoder_proj.weight", 0), ("joiner.output_linear.weight", 1)],
        )
        if decoder_dim is None:
            raise ValueError(f"{source}: cannot tell the decoder dim: no decoder.embedding.weight")
        if joiner_dim is None:
            raise ValueError(f"{source}: cannot tell the joiner dim: no joiner.encoder_proj.weight")
        context = _dim(state, [("decoder.conv.weight", 2)])
        config.update(decoder_dim=decoder_dim, joiner_dim=joiner_dim, context_size=context or 1)
    return config


def _show(keys: list[str]) -> str:
    return ", ".join(keys[:5]) + (f" ... ({len(keys)} in all)" if len(keys) > 5 else "")


def convert_icefall(
    state_dict: dict[str, torch.Tensor],
    encoder: str,
    causal: bool = False,
    overrides: dict[str, Any] | None = None,
    ignore: Iterable[str] = (),
    source: str = "input",
) -> AsrModel:
    """The :class:`AsrModel` of an icefall model state dict, in eval mode.

    Args:
        state_dict: icefall's ``model`` state dict (:func:`read_icefall_checkpoint`; a ``module.``
            prefix is removed here too).
        encoder: the encoder preset it was trained as (``"zipformer-medium"``, ...).
        causal: a streaming (chunk-causal) model (icefall's ``--causal 1``).
        overrides: preset fields for models trained with other sizes (``num_encoder_layers=(2,) * 6``, as
            icefall's ``--num-encoder-layers``) and streaming settings (``chunk_size``, ...); stored in the
            model's build config, so the model file rebuilds the same encoder.
        ignore: prefixes of entries to drop before converting (modules we have no counterpart for).
        source: names the checkpoint in error messages.

    Raises:
        ValueError: entries that are not part of the model, or that do not fit it (missing, unexpected,
            shape mismatch); the message names them.
    """
    overrides = dict(overrides or {})
    state = {k.removeprefix("module."): v for k, v in state_dict.items()}
    for prefix in ignore:
        dropped = [k for k in state if _matches(k, prefix)]
        if not dropped:
            raise ValueError(f"{source}: --ignore {prefix}: no entry starts with it")
        for key in dropped:
            del state[key]
    foreign = sorted({k.split(".")[0] for k in state if not k.startswith(ENCODER_PREFIXES)} - set(HEAD_MODULES))
    if foreign:
        counts = ", ".join(
            f"{m}.* ({n} tensor{'s' * (n != 1)})" for m in foreign for n in [sum(k.split(".")[0] == m for k in state)]
        )
        raise ValueError(
            f"{source}: entries that are not part of an asr model: {counts}; "
            f"drop them with --ignore {' --ignore '.join(foreign)}"
        )
    if not any(k.startswith(ENCODER_PREFIXES) for k in state):
        raise ValueError(f"{source}: no encoder_embed.* / encoder.* entries")
    heads = head_config(state, source)
    sizes = {k: v for k, v in heads.items() if k not in ("heads", "vocab_size")}
    try:
        model = build_model(
            encoder, heads["vocab_size"], heads=heads["heads"], causal=causal, encoder_kwargs=overrides, **sizes
        )
    except (TypeError, ValueError) as err:  # an unknown encoder or --set field, or unbuildable head sizes
        raise ValueError(
            f"{source}: cannot build {encoder} (causal={causal}, --set {overrides}, head sizes "
            f"{heads}): {_first_line(err)}"
        ) from err
    # Compared in icefall's names, so that the messages name entries as the input has them; our only
    # ``encoder.`` entries are the encoder's.
    expected = {k.removeprefix("encoder."): v for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or mismatched:
        problems = [
            f"{name}: {_show(keys)}"
            for name, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                (
                    "shape mismatch",
                    [f"{k} {tuple(state[k].shape)} vs ours {tuple(expected[k].shape)}" for k in mismatched],
                ),
            )
            if keys
        ]
        looks_causal = any(".causal_conv." in k for k in state if k.startswith(ENCODER_PREFIXES))
        hint = ""
        if looks_causal and not causal:
            hint = " (a causal model: add --causal)"
        elif causal and not looks_causal and encoder.startswith("zipformer"):
            hint = " (not a causal model: drop --causal)"
        raise ValueError(f"{source}: entries do not fit {encoder} (causal={causal}){hint}; " + "; ".join(problems))
    ours = {("encoder." + k if k.startswith(ENCODER_PREFIXES) else k): v for k, v in state.items()}
    model.load_state_dict(ours, strict=True)
    return model.eval()
