"""Export to ONNX in the layout sherpa-onnx reads, and onnxruntime sessions of an export.

What exports (``asr export onnx``, :func:`export_onnx`):

* Zipformer transducers (every ``zipformer-*`` preset, icefall checkpoints converted by ``asr convert
  icefall`` included), offline (full context) and, for models built causal, streaming with explicit
  caches: ``encoder.onnx``, ``decoder.onnx``, ``joiner.onnx`` and ``tokens.txt``, plus ``*.int8.onnx``
  with ``--int8``. sherpa-onnx loads them with ``OnlineRecognizer.from_transducer`` (streaming) and
  ``OfflineRecognizer.from_transducer`` (offline). A causal model exports offline too (it then runs with
  full context, as ``asr decode`` without ``--chunk-size``).
* Zipformer CTC models (``--head ctc``, offline only): one ``model.onnx`` and ``tokens.txt`` for
  ``OfflineRecognizer.from_zipformer_ctc``.

What does not: the Conformer, Efficient Conformer and Transformer encoders, the Transformer-Transducer's
label-encoder prediction network, the attention-decoder (AED) head (a model that also has a transducer or
CTC head exports that head) and streaming CTC; the command refuses them before writing anything.

The Python API runs a transducer export too: ``asr.Recognizer.from_checkpoint(D, backend="onnxruntime")``
on an offline export, ``asr.OnlineRecognizer.from_checkpoint(D, backend="onnxruntime")`` on a streaming
one (its chunk and left context are the export's), or :func:`load_onnx_model` for the model object
(:mod:`asr.export.backend`): the same searches, options and results as the torch backend, with the
networks in onnxruntime (CPU; CUDA where onnxruntime-gpu is installed).
"""

from __future__ import annotations

from asr.export.backend import load_onnx_model
from asr.export.onnx import ExportError, ExportResult, export_onnx

__all__ = ["ExportError", "ExportResult", "export_onnx", "load_onnx_model"]
