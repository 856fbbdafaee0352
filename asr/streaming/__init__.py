"""Streaming inference: :class:`OnlineRecognizer` and its streams (incremental fbank, per-stream caches,
batched ``decode_streams``, endpointing), and chunk-by-chunk encoding of whole utterances."""

from asr.streaming.simulate import is_streaming_encoder, simulate_streaming


def __getattr__(name: str):
    # The recognizer imports the inference package, which imports this one: load it on first use.
    if name in ("OnlineRecognizer", "Stream", "EndpointConfig", "EndpointRule"):
        from asr.streaming import online

        return getattr(online, name)
    raise AttributeError(f"module 'asr.streaming' has no attribute {name!r}")


__all__ = ["EndpointConfig", "EndpointRule", "OnlineRecognizer", "Stream", "is_streaming_encoder", "simulate_streaming"]
