"""Streaming inference: chunk-by-chunk encoding with per-layer caches."""

from asr.streaming.simulate import is_streaming_encoder, simulate_streaming

__all__ = ["is_streaming_encoder", "simulate_streaming"]
