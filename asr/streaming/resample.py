"""Resampling a stream piece by piece, equal to resampling the whole signal at once.

:func:`asr.data.audio.resample` (scipy's polyphase ``resample_poly``) turns every ``down`` input samples
into ``up`` output samples, each output a filter over the inputs near it. Output block ``k`` (outputs
``[k·up, (k+1)·up)``) therefore depends only on inputs ``[k·down - C, (k+1)·down + C)`` for a context
``C`` of half the filter: this object resamples windows with that context as samples arrive and keeps the
middle of each, so pieces of any size give the same samples as one call over the whole signal.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.signal import resample_poly


class StreamResampler:
    """Resample one stream from ``orig_rate`` to ``new_rate`` Hz as samples arrive."""

    def __init__(self, orig_rate: int, new_rate: int):
        common = math.gcd(orig_rate, new_rate)
        self.up, self.down = new_rate // common, orig_rate // common
        half_filter = 10 * max(self.up, self.down)  # resample_poly's half filter length, in upsampled samples
        context = half_filter // self.up + 2
        self.context = math.ceil(context / self.down) * self.down  # a multiple of down keeps blocks aligned
        self._buffer = np.zeros(self.context, dtype=np.float32)  # zeros before the start, as resample_poly pads
        self._buffer_start = -self.context  # input index of self._buffer[0]
        self._next_block = 0
        self.num_input = 0
        self.finished = False

    def accept(self, samples: np.ndarray) -> np.ndarray:
        """Append input samples; returns the output samples that became computable."""
        self._buffer = np.concatenate([self._buffer, np.asarray(samples, dtype=np.float32).reshape(-1)])
        self.num_input += int(np.size(samples))
        end_block = (self.num_input - self.context) // self.down
        if end_block <= self._next_block:
            return np.zeros(0, dtype=np.float32)
        return self._emit(end_block * self.down + self.context, (end_block - self._next_block) * self.up, end_block)

    def finish(self) -> np.ndarray:
        """No more input: the remaining output samples (``ceil(n · up / down)`` in all)."""
        if self.finished:
            return np.zeros(0, dtype=np.float32)
        self.finished = True
        total = -(-self.num_input * self.up // self.down)
        remaining = total - self._next_block * self.up
        if remaining <= 0:
            return np.zeros(0, dtype=np.float32)
        self._buffer = np.concatenate([self._buffer, np.zeros(self.context + self.down, dtype=np.float32)])
        end = self._buffer_start + self._buffer.size
        return self._emit(end, remaining, None)

    def _emit(self, window_end: int, count: int, end_block: int | None) -> np.ndarray:
        window_start = self._next_block * self.down - self.context
        window = self._buffer[window_start - self._buffer_start : window_end - self._buffer_start]
        out = resample_poly(window, self.up, self.down)
        skip = self.context * self.up // self.down
        if end_block is not None:
            self._next_block = end_block
            keep_from = end_block * self.down - self.context
            self._buffer = self._buffer[keep_from - self._buffer_start :]
            self._buffer_start = keep_from
        return out[skip : skip + count].astype(np.float32)
