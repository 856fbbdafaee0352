"""Eden: the learning-rate schedule Zipformer is trained with (decay in both batches and epochs)."""

from __future__ import annotations

from typing import Any

import torch


class Eden:
    """Set each parameter group's lr to ``base_lr · f(batch, epoch)``.

    ``f = ((b² + B²)/B²)^-¼ · ((e² + E²)/E²)^-¼ · w``, where ``B = lr_batches``, ``E = lr_epochs`` and the warmup
    ``w`` rises linearly from ``warmup_start`` at batch 0 to 1 at ``warmup_batches``, then stays 1. The lr
    barely moves until ``b ≈ B`` / ``e ≈ E`` and then falls like ``b^-½ · e^-½``.

    ``base_lr`` is each group's lr when the scheduler is created (kept in the group as "base_lr", as icefall
    does). Unlike icefall's Eden, the batch-0 lr is applied at construction, so the first step is already
    warmed-up; training loops that call ``step_epoch`` before the first batch see no difference.

    Usage::

        scheduler = Eden(optimizer, lr_batches=7500, lr_epochs=3.5)
        for epoch in range(num_epochs):
            scheduler.step_epoch(epoch)
            for batch in loader:
                ...; optimizer.step()
                scheduler.step_batch()   # or step_batch(global_batch_index)
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        lr_batches: float = 7500,
        lr_epochs: float = 3.5,
        warmup_batches: float = 500.0,
        warmup_start: float = 0.1,
    ) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"Eden needs a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if lr_batches <= 0 or lr_epochs <= 0:
            raise ValueError(f"lr_batches and lr_epochs must be > 0, got {lr_batches} and {lr_epochs}")
        if warmup_batches < 0:
            raise ValueError(f"warmup_batches must be >= 0, got {warmup_batches}")
        if not 0.0 <= warmup_start <= 1.0:
            raise ValueError(f"warmup_start must be in [0, 1], got {warmup_start}")
        self.optimizer = optimizer
        self.lr_batches = lr_batches
        self.lr_epochs = lr_epochs
        self.warmup_batches = warmup_batches
        self.warmup_start = warmup_start
        for group in optimizer.param_groups:
            group.setdefault("base_lr", group["lr"])
        self.base_lrs: list[float] = [group["base_lr"] for group in optimizer.param_groups]
        self.batch = 0
        self.epoch = 0
        self._apply()

    def get_lr(self) -> list[float]:
        """The lr of each parameter group at the current batch and epoch."""
        # Kept in icefall's operation order so the lr values are bit-identical to its.
        decay = ((self.batch**2 + self.lr_batches**2) / self.lr_batches**2) ** -0.25 * (
            ((self.epoch**2 + self.lr_epochs**2) / self.lr_epochs**2) ** -0.25
        )
        if self.batch >= self.warmup_batches:
            warmup = 1.0
        else:
            warmup = self.warmup_start + (1.0 - self.warmup_start) * (self.batch / self.warmup_batches)
        return [base_lr * decay * warmup for base_lr in self.base_lrs]

    def step_batch(self, batch: int | None = None) -> None:
        """Advance by one batch (call after each optimizer step), or set the global batch index."""
        self.batch = self.batch + 1 if batch is None else batch
        self._apply()

    def step_epoch(self, epoch: int | float | None = None) -> None:
        """Set the epoch (call at the start of an epoch), or advance it by one (call at the end of one)."""
        self.epoch = self.epoch + 1 if epoch is None else epoch
        self._apply()

    def get_last_lr(self) -> list[float]:
        """The lr now set in each parameter group."""
        return list(self._last_lr)

    def state_dict(self) -> dict[str, Any]:
        """Position and base lrs (the same keys as icefall's scheduler checkpoints)."""
        return {"base_lrs": list(self.base_lrs), "epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the position and base lrs, and set the optimizer's lrs from them."""
        if len(state_dict["base_lrs"]) != len(self.optimizer.param_groups):
            raise ValueError(
                f"Eden state has {len(state_dict['base_lrs'])} base lrs but the optimizer has "
                f"{len(self.optimizer.param_groups)} parameter groups"
            )
        self.base_lrs = list(state_dict["base_lrs"])
        self.epoch = state_dict["epoch"]
        self.batch = state_dict["batch"]
        self._apply()

    def _apply(self) -> None:
        for group, lr in zip(self.optimizer.param_groups, self.get_lr()):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]
