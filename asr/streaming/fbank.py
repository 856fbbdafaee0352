"""Fbank computed as audio arrives, equal to the offline fbank of the same samples.

The offline features (:func:`asr.data.features.compute_fbank`, lhotse's Kaldi-compatible extractor with
``snip_edges=False``) pad the waveform by reflection: 120 samples at the start, and at the end as many as
the last frame needs. A frame whose 25 ms window lies inside the samples received so far can therefore be
computed at once; the last few wait for :meth:`OnlineFbank.input_finished`. Each frame is computed by the
same lhotse module on the same samples, so streamed and offline features agree to float rounding.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from lhotse import Fbank, FbankConfig

from asr.data.features import FEATURE_DIM, SAMPLE_RATE

WINDOW = 400  # samples in a 25 ms frame at 16 kHz
SHIFT = 160  # samples per 10 ms hop
LEFT_PAD = (WINDOW - SHIFT) // 2  # reflected samples before the first sample (lhotse's snip_edges=False)


class OnlineFbank:
    """Incremental 80-bin fbank of one 16 kHz stream.

    ``accept_waveform`` appends samples; ``pop_frames`` returns the frames that became computable since the
    last call; after ``input_finished`` the remaining frames follow, ``(num_samples + 80) // 160`` in all.
    """

    def __init__(self) -> None:
        config = FbankConfig(num_mel_bins=FEATURE_DIM, sampling_rate=SAMPLE_RATE, frame_shift=SHIFT / SAMPLE_RATE)
        config.snip_edges = True  # this object pads; the module sees exactly the windows it must compute
        with warnings.catch_warnings():  # lhotse warns that snip_edges=True changes frame counts: not here
            warnings.simplefilter("ignore", UserWarning)
            self._module = Fbank(config).extractor
        self._padded = np.zeros(0, dtype=np.float32)  # the reflected start and the samples, from _first_sample on
        self._first_sample = 0  # index in the padded signal of self._padded[0]
        self._head: np.ndarray | None = np.zeros(0, dtype=np.float32)  # the first samples, until the start pad
        self._tail = np.zeros(0, dtype=np.float32)  # the last WINDOW samples, for the end pad
        self.num_samples = 0
        self.num_frames = 0  # frames popped so far
        self.finished = False

    def accept_waveform(self, samples: np.ndarray) -> None:
        """Append 16 kHz float samples ``(num_samples,)``."""
        if self.finished:
            raise RuntimeError("accept_waveform after input_finished")
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        self.num_samples += samples.size
        self._tail = np.concatenate([self._tail, samples])[-WINDOW:]
        if self._head is not None:
            self._head = np.concatenate([self._head, samples])
            if self._head.size < LEFT_PAD:
                return
            samples, self._head = self._head, None
            samples = np.concatenate([samples[:LEFT_PAD][::-1], samples])
        self._padded = np.concatenate([self._padded, samples])

    def input_finished(self) -> None:
        """No more samples: the end pad is written and the last frames become computable."""
        if self.finished:
            return
        self.finished = True
        if self._head is not None:  # fewer than LEFT_PAD samples in all
            self._padded = np.concatenate([self._head[::-1], self._head])
            self._head = None
        total = self.total_frames
        needed = (total - 1) * SHIFT + WINDOW - (self.num_samples + LEFT_PAD)
        if total > 0 and needed > 0:
            self._padded = np.concatenate([self._padded, self._tail[-needed:][::-1]])

    @property
    def total_frames(self) -> int:
        """Frames of the whole stream once finished (before that, of the samples so far)."""
        return (self.num_samples + SHIFT // 2) // SHIFT

    def pop_frames(self) -> torch.Tensor:
        """``(K, 80)`` float32: the frames computable now that were not returned before."""
        end = self._first_sample + self._padded.size  # the padded signal available, as an index
        ready = (end - WINDOW) // SHIFT + 1 if end >= WINDOW else 0
        if self.finished:
            ready = self.total_frames
        if self._head is not None or ready <= self.num_frames:
            return torch.zeros(0, FEATURE_DIM)
        start = self.num_frames * SHIFT - self._first_sample
        stop = (ready - 1) * SHIFT + WINDOW - self._first_sample
        with torch.no_grad():
            frames = self._module(torch.from_numpy(self._padded[start:stop]).unsqueeze(0))[0]
        self.num_frames = ready
        keep_from = ready * SHIFT  # the next frame's first padded sample
        self._padded = self._padded[keep_from - self._first_sample :]
        self._first_sample = keep_from
        return frames.float()
