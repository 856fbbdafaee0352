"""The encoder contract: what the models, decoding, streaming and export code may rely on.

:class:`Encoder` is every acoustic encoder: fbank ``(N, T, F)`` at 100 Hz with lengths ``(N,)`` in, encoder
frames ``(N, T', C)`` with lengths out, and ``output_lengths`` to get ``T'`` without running the network.

:class:`StreamingEncoder` is a family that can be built causal (``causal=True``). Such a model attends
within chunks of ``chunk_size`` frames plus ``left_context_frames`` frames of left context, and
``streaming_forward`` encodes one chunk at a time with caches, giving the chunk-masked full forward's
output. Chunk sizes and left contexts are counted in the family's own encoder frames, of
``chunk_frame_ms`` milliseconds each (the Zipformer counts at 50 Hz, after its front end; the Conformer and
the Transformer at their 25 Hz output rate). They are set in one way, :meth:`StreamingEncoder.set_streaming`,
and :meth:`StreamingEncoder.full_context` lifts every limit for offline decoding of a causal model.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterator
from typing import ClassVar

import torch
from torch import Tensor, nn

__all__ = ["Encoder", "StreamingEncoder"]


class Encoder(nn.Module, abc.ABC):
    """An acoustic encoder.

    Attributes:
        output_dim: ``C``, the width of the output frames.
    """

    output_dim: int

    @abc.abstractmethod
    def forward(self, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor]:
        """Encode a padded batch.

        Args:
            x: ``(N, T, F)`` features (80-dim log-mel fbank, 10 ms hop); frames past ``x_lens`` are padding.
            x_lens: ``(N,)`` int64 valid frames per utterance.
        Returns:
            ``(N, T', output_dim)`` encoder frames and their valid lengths ``(N,)``, equal to
            ``output_lengths(x_lens)``.
        """

    @abc.abstractmethod
    def output_lengths(self, x_lens: Tensor) -> Tensor:
        """Encoder frames ``(N,)`` for ``x_lens`` ``(N,)`` feature frames, without running the encoder."""


class StreamingEncoder(Encoder):
    """An encoder family with a causal (streaming) variant.

    Subclasses set ``causal`` and ``chunk_frame_ms``, implement the abstract methods and name in
    ``context_attributes`` every attribute that holds a context setting, so that :meth:`full_context`
    and :meth:`streaming` can restore them.

    Attributes:
        causal: built for streaming (chunk-causal convolutions, chunked attention). A model built with
            ``causal=False`` has the same interface but cannot stream (``supports_streaming`` is False).
        chunk_frame_ms: duration in ms of the frames in which chunk sizes and left contexts are counted.
    """

    causal: bool
    chunk_frame_ms: ClassVar[int]
    context_attributes: ClassVar[tuple[str, ...]]

    @property
    def supports_streaming(self) -> bool:
        """Whether ``streaming_forward`` can run: only a model built causal can stream."""
        return self.causal

    # -- the streaming forward ---------------------------------------------------------------------------
    @abc.abstractmethod
    def init_states(self, batch_size: int = 1, device: torch.device | str = "cpu") -> list[Tensor]:
        """Zero caches for ``batch_size`` new streams under the current chunk and left context; the batch
        axis of entry ``i`` is ``state_batch_dims()[i]``."""

    @abc.abstractmethod
    def state_batch_dims(self) -> list[int]:
        """The batch axis of each entry of ``init_states()``, for stacking and splitting streams."""

    @abc.abstractmethod
    def streaming_forward(self, x: Tensor, x_lens: Tensor, states: list[Tensor]) -> tuple[Tensor, Tensor, list[Tensor]]:
        """Encode the next chunk of every stream.

        Args:
            x: ``(N, streaming_feature_frames, F)``: the window starting ``k * streaming_feature_shift``
                feature frames into the utterance for call ``k`` (windows overlap by the look-ahead; pad
                past the end of an utterance).
            x_lens: ``(N,)`` valid feature frames of ``x``.
            states: from ``init_states`` or the previous call.
        Returns:
            ``(N, T_chunk, output_dim)`` output frames of this chunk, their valid lengths ``(N,)`` and the
            new states.
        """

    @property
    @abc.abstractmethod
    def streaming_feature_frames(self) -> int:
        """Feature frames (10 ms) one ``streaming_forward`` call consumes: the chunk plus look-ahead."""

    @property
    @abc.abstractmethod
    def streaming_feature_shift(self) -> int:
        """Feature frames (10 ms) the window advances between calls: the chunk."""

    # -- chunk and left context --------------------------------------------------------------------------
    @abc.abstractmethod
    def streaming_context(self) -> tuple[int, int]:
        """``(chunk_size, left_context_frames)`` used in eval and streaming, in ``chunk_frame_ms`` frames;
        ``chunk_size`` -1 means no chunk mask and ``left_context_frames`` -1 an unlimited left context."""

    @abc.abstractmethod
    def _store_streaming(self, chunk_size: int, left_context_frames: int) -> None:
        """Write validated settings (``chunk_size > 0``, a positive multiple as left context) to the
        family's own attributes."""

    @abc.abstractmethod
    def _store_full_context(self) -> None:
        """Write the family's settings for attention with no chunk mask and no context limit."""

    def _check_context(self, chunk_size: int, left_context_frames: int) -> None:
        """Family-specific checks of settings that passed the common ones; raise ``ValueError``."""

    def set_streaming(self, chunk_size: int, left_context_frames: int | None = None) -> None:
        """Attend within chunks of ``chunk_size`` frames plus ``left_context_frames`` frames of left
        context, in eval (the chunk-masked full forward) and in ``streaming_forward``; training still
        draws its own per batch.

        Args:
            chunk_size: > 0, in ``chunk_frame_ms`` frames.
            left_context_frames: a positive multiple of ``chunk_size``, in the same frames; ``None`` keeps
                the current one.
        Raises:
            ValueError: the model was built non-causal, or the settings cannot be streamed.
        """
        name = type(self).__name__
        if not self.causal:
            raise ValueError(
                f"{name} was built with causal=False: it has no chunked attention and cannot "
                "stream; build it with causal=True"
            )
        if left_context_frames is None:
            left_context_frames = self.streaming_context()[1]
        unit = f"{self.chunk_frame_ms} ms frames"
        if int(chunk_size) != chunk_size or chunk_size <= 0:
            raise ValueError(f"{name}: chunk_size must be a positive number of {unit}, got {chunk_size}")
        if int(left_context_frames) != left_context_frames or left_context_frames <= 0:
            raise ValueError(
                f"{name}: streaming needs a finite left context, a positive multiple of chunk_size "
                f"{chunk_size} ({unit}); got left_context_frames {left_context_frames}"
            )
        if left_context_frames % chunk_size:
            raise ValueError(
                f"{name}: left_context_frames {left_context_frames} must be a multiple of "
                f"chunk_size {chunk_size} ({unit})"
            )
        self._check_context(int(chunk_size), int(left_context_frames))
        self._store_streaming(int(chunk_size), int(left_context_frames))

    @contextlib.contextmanager
    def _restoring_context(self) -> Iterator[None]:
        saved = {name: getattr(self, name) for name in self.context_attributes}
        try:
            yield
        finally:
            for name, value in saved.items():
                setattr(self, name, value)

    @contextlib.contextmanager
    def streaming(self, chunk_size: int, left_context_frames: int | None = None) -> Iterator[None]:
        """``set_streaming(chunk_size, left_context_frames)`` inside the block; the previous settings
        afterwards (also when the block raises)."""
        with self._restoring_context():
            self.set_streaming(chunk_size, left_context_frames)
            yield

    @contextlib.contextmanager
    def full_context(self) -> Iterator[None]:
        """Inside the block a causal encoder attends with no chunk mask and no context limit (the offline
        decode its streaming decode is compared with); its settings are restored afterwards. A model
        built non-causal is left as built."""
        with self._restoring_context():
            if self.causal:
                self._store_full_context()
            yield
