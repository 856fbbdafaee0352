"""The training loop: one file, readable in one sitting.

``train(config)`` builds the tokenizer, model, ScaledAdam + Eden and the data loaders, resumes from the
newest checkpoint in ``exp_dir`` if there is one, and trains. Under ``torchrun`` it runs data-parallel
(gloo on CPU, nccl on GPU); everything rank-specific lives in :mod:`asr.training.distributed`, the data
in :mod:`asr.data.training_data`, and the weighting of the model's raw losses in :mod:`asr.training.losses`.

What a checkpoint holds (``exp_dir/checkpoint-<batch>.pt`` every ``save_every_n`` batches and
``exp_dir/epoch-<n>.pt`` after each epoch): the model, its running average, the optimizer, the
scheduler, the grad scaler, the position in the epoch's batch order, RNG states and the config, so a
killed run resumes from the same step; and the tokenizer files, so ``asr decode`` needs only it.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from asr import checkpoint as ckpt
from asr.data.datamodule import DataConfig
from asr.data.tokenizer import Tokenizer, load_tokenizer
from asr.data.training_data import TrainingData
from asr.device import resolve_device
from asr.models import AsrModel, build_model
from asr.optim import Eden, ScaledAdam
from asr.training import distributed as dist_utils
from asr.training.losses import combine_losses

log = logging.getLogger("asr.train")


@dataclass
class TrainConfig:
    """Everything a training run depends on. Defaults follow icefall's Zipformer recipe where they apply."""

    exp_dir: str
    train_cuts: str
    lang_dir: str
    valid_cuts: str | None = None
    encoder: str = "zipformer-xs"
    heads: tuple[str, ...] = ("transducer", "ctc")
    causal: bool = False
    num_epochs: int = 30
    max_duration: float = 200.0  # seconds of audio per batch (per process)
    base_lr: float = 0.045
    lr_batches: float = 7500.0
    lr_epochs: float = 3.5
    warmup_batches: float = 500.0
    # icefall counts batches as if each held ref_duration seconds in total, so the model's regularisation
    # schedules do not depend on the batch size or the number of processes (see adjusted_batch_count).
    ref_duration: float = 600.0
    # The model's regularisation schedules advance this many times faster than icefall's batch count:
    # short runs need them to settle within their length.
    schedule_speedup: float = 1.0
    prune_range: int = 5
    lm_scale: float = 0.25
    am_scale: float = 0.0
    simple_loss_scale: float = 0.5
    ctc_loss_scale: float = 0.2
    aed_loss_scale: float = 0.8
    warm_step: int = 2000
    seed: int = 42
    save_every_n: int = 2000
    keep_last_k: int = 5
    keep_last_epochs: int = 0  # epoch-<n>.pt files kept (the newest); 0 keeps them all
    average_period: int = 200
    log_interval: int = 20
    amp: str = "auto"  # "auto" (bf16 on GPUs that have it, else fp16; off on CPU), "bf16", "fp16", "off"
    num_workers: int = 2
    spec_augment: bool = True
    on_the_fly_feats: bool = True
    noise_cuts: str | None = None
    max_minutes: float | None = None  # stop (after a checkpoint) when the wall-clock budget is spent
    max_batches: int | None = None  # stop (after a checkpoint) at this batch count: runs compared at equal work
    device: str = "auto"
    compile: bool = False  # torch.compile the encoder's forward (AsrModel.compile_encoder)
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    encoder_kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training options {unknown}")
        values = dict(values)
        if "heads" in values:
            values["heads"] = tuple(values["heads"])
        return cls(**values)

    def adjusted_batch_count(self, batch_idx_train: int, world_size: int = 1) -> float:
        """The batch count the model's schedules follow (ScheduledFloat users: dropout, layer skipping,
        balancers): icefall's ``batch_idx_train * max_duration * world_size / ref_duration``, times
        ``schedule_speedup``."""
        return batch_idx_train * (self.max_duration * world_size * self.schedule_speedup) / self.ref_duration


@dataclass
class TrainState:
    """Where training stands; saved in every checkpoint."""

    epoch: int = 1  # the epoch in progress (1-based, like icefall)
    batch_in_epoch: int = 0  # batches of this epoch already trained on
    batch_idx_train: int = 0  # batches trained on in total
    best_valid_loss: float = math.inf
    skipped_batches: int = 0  # non-finite loss or gradients
    skipped_cuts: int = 0  # cuts whose audio or features could not be loaded (this process's share)


def scheduled_modules(model: nn.Module) -> list[nn.Module]:
    """The modules whose behaviour follows the batch count (Balancer, Whiten, ScheduledFloat users)."""
    return [module for module in model.modules() if hasattr(module, "batch_count")]


def set_batch_count(modules: list[nn.Module], batch_count: float) -> None:
    """Tell each of ``modules`` (see :func:`scheduled_modules`) the adjusted batch count."""
    for module in modules:
        module.batch_count = batch_count


def non_finite_gradients(model: nn.Module) -> list[str]:
    """Names of the parameters whose gradient holds an inf or NaN."""
    named = [(name, p.grad) for name, p in model.named_parameters() if p.grad is not None]
    if not named:
        return []
    # One fused norm per gradient and one check; inf and NaN both make a norm non-finite. Only a bad
    # step pays for the per-parameter search.
    norms = torch._foreach_norm([grad for _, grad in named])
    if torch.isfinite(torch.stack(norms)).all():
        return []
    return [name for name, grad in named if not torch.isfinite(grad).all()]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for float32 training."""
    if device.type != "cuda" or amp == "off":
        if amp in ("bf16", "fp16") and device.type != "cuda":
            log.warning("AMP (%s) is for GPUs; training in float32 on %s", amp, device)
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]


class Trainer:
    """Holds the objects of a run; :meth:`fit` is the loop."""

    def __init__(self, config: TrainConfig):
        self.config = config
        self.exp_dir = Path(config.exp_dir)
        self.world = dist_utils.init()
        self.device = resolve_device(config.device, self.world.local_rank)
        seed_everything(config.seed + self.world.rank)

        self.tokenizer = load_tokenizer(config.lang_dir)
        self.model: AsrModel = build_model(
            config.encoder,
            self.tokenizer.vocab_size,
            heads=config.heads,
            causal=config.causal,
            encoder_kwargs=config.encoder_kwargs,
            **config.model_kwargs,
        ).to(self.device)
        if config.compile:
            self.model.compile_encoder()
        # The running average is kept in float64 on rank 0 only (icefall's model_avg).
        self.model_avg: AsrModel | None = None
        if self.world.is_main:
            self.model_avg = build_model(
                config.encoder,
                self.tokenizer.vocab_size,
                heads=config.heads,
                causal=config.causal,
                encoder_kwargs=config.encoder_kwargs,
                **config.model_kwargs,
            ).to(torch.float64)
            self.model_avg.load_state_dict(self.model.state_dict())
        self.ddp_model = dist_utils.wrap(self.model, self.world, self.device)
        self.scheduled = scheduled_modules(self.model)

        self.optimizer = ScaledAdam(self.model.named_parameters(), lr=config.base_lr, clipping_scale=2.0)
        self.scheduler = Eden(self.optimizer, config.lr_batches, config.lr_epochs, warmup_batches=config.warmup_batches)
        self.amp_dtype = resolve_amp(config.amp, self.device)
        # The losses are sums over the batch, so gradients are large: a 200 s batch of zipformer-xs at
        # initialisation has entries near 2e4, and fp16 overflows from a loss scale of ~4 up (torch's
        # default starts at 65536 and would skip a dozen batches). icefall starts at 1 as well.
        self.scaler = torch.amp.GradScaler("cuda", init_scale=1.0, enabled=self.amp_dtype == torch.float16)
        self.state = TrainState()
        self.data = make_data(config, self.tokenizer, self.world, self.model)
        self.writer = None
        if self.world.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.exp_dir / "tensorboard"))

    # ---- checkpoints -------------------------------------------------------------------------------

    def checkpoint_dict(self, rng_states: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "format": ckpt.TRAIN_FORMAT,
            "version": ckpt.VERSION,
            "config": asdict(self.config),
            "build_config": self.model.build_config,
            "model": self.model.state_dict(),
            "model_avg": self.model_avg.state_dict() if self.model_avg is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "grad_scaler": self.scaler.state_dict(),
            "state": asdict(self.state),
            "rng": rng_states,  # one per rank: ranks draw different augmentation and dropout
            "tokenizer": ckpt.tokenizer_files(self.config.lang_dir),
        }

    def save(self, name: str) -> None:
        rng_states = dist_utils.gather_objects(rng_state(), self.world)
        if self.world.is_main:
            path = ckpt.save_atomic(self.checkpoint_dict(rng_states), self.exp_dir / name)
            log.info("saved %s", path)
            ckpt.remove_old_batch_checkpoints(self.exp_dir, self.config.keep_last_k)
            ckpt.remove_old_epoch_checkpoints(self.exp_dir, self.config.keep_last_epochs)
        dist_utils.barrier(self.world)

    def resume(self) -> bool:
        """Load the newest checkpoint in exp_dir, if any. Returns whether it did."""
        found = ckpt.newest_readable_checkpoint(self.exp_dir)  # a torn newest file is skipped, with a warning
        if found is None:
            return False
        path, saved = found
        self.model.load_state_dict(saved["model"])
        if self.model_avg is not None and saved["model_avg"] is not None:
            self.model_avg.load_state_dict(saved["model_avg"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["grad_scaler"])
        self.state = TrainState(**saved["state"])
        if len(saved["rng"]) != self.world.size:
            log.warning(
                "checkpoint has RNG states of %d processes, this run has %d: the RNG is reseeded",
                len(saved["rng"]),
                self.world.size,
            )
            seed_everything(self.config.seed + self.world.rank + self.state.batch_idx_train)
        else:
            set_rng_state(saved["rng"][self.world.rank])
        log.info(
            "resumed from %s: epoch %d, batch %d of the epoch, %d batches in total",
            path,
            self.state.epoch,
            self.state.batch_in_epoch,
            self.state.batch_idx_train,
        )
        return True

    # ---- one step ----------------------------------------------------------------------------------

    def compute_loss(self, batch: dict[str, Any], training: bool) -> tuple[torch.Tensor, dict[str, float]]:
        features = batch["features"].to(self.device)
        feature_lens = batch["feature_lens"].to(self.device)
        autocast = (
            torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)
            if self.amp_dtype is not None
            else nullcontext()
        )
        config, model = self.config, self.ddp_model if training else self.model
        with autocast:
            losses = model(
                features,
                feature_lens,
                batch["tokens"],
                prune_range=config.prune_range,
                am_scale=config.am_scale,
                lm_scale=config.lm_scale,
            )
            loss = combine_losses(
                *losses,
                batch_idx_train=self.state.batch_idx_train,
                warm_step=config.warm_step,
                simple_loss_scale=config.simple_loss_scale,
                ctc_loss_scale=config.ctc_loss_scale,
                aed_loss_scale=config.aed_loss_scale,
            )
        # Per-frame values for logging, like icefall (frames after subsampling).
        frames = float(sum(self.model.encoder_output_lengths(feature_lens).tolist()))
        stats = {"frames": frames, "utterances": float(features.size(0)), "loss": loss.item()}
        for name, value in losses._asdict().items():
            if value is not None:
                stats[f"{name}_loss"] = value.item()
        return loss, stats

    def train_step(self, batch: dict[str, Any]) -> dict[str, float] | None:
        """Forward, backward and update; returns stats, or None if the batch was skipped as non-finite."""
        self.model.train()
        set_batch_count(self.scheduled, self.config.adjusted_batch_count(self.state.batch_idx_train, self.world.size))
        loss, stats = self.compute_loss(batch, training=True)
        # All ranks skip together: a rank that went on to backward() would wait forever (or fail) in the
        # gradient all-reduce that the skipping rank never joins.
        loss_finite = math.isfinite(stats["loss"])
        if dist_utils.any_true(not loss_finite, self.world):
            self.skip(batch, "non-finite loss on another rank" if loss_finite else f"non-finite loss {stats['loss']}")
            return None
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        non_finite = non_finite_gradients(self.model)
        if non_finite:
            # The scaler lowers its scale on this step; with fp16 that is routine, otherwise a real problem.
            shown = ", ".join(non_finite[:3]) + (" ..." if len(non_finite) > 3 else "")
            scale = f", loss scale {self.scaler.get_scale():g}" if self.scaler.is_enabled() else ""
            self.skip(batch, f"non-finite gradients in {len(non_finite)} parameters: {shown}{scale}")
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            return None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return stats

    def skip(self, batch: dict[str, Any], why: str) -> None:
        self.state.skipped_batches += 1
        self.optimizer.zero_grad(set_to_none=True)
        cut_ids = batch.get("cut_ids", [])
        log.warning(
            "skipping batch %d (%s); cuts: %s%s",
            self.state.batch_idx_train,
            why,
            ", ".join(cut_ids[:8]),
            " ..." if len(cut_ids) > 8 else "",
        )

    def update_average(self) -> None:
        """model_avg ← model_avg·(1-w) + model·w with w = average_period / batch_idx_train (icefall)."""
        if self.model_avg is None:
            return
        weight = self.config.average_period / self.state.batch_idx_train
        current = self.model.state_dict()
        with torch.no_grad():
            for key, avg in self.model_avg.state_dict().items():
                if avg.is_floating_point():
                    # model_avg stays on the CPU (icefall), whatever device trains.
                    avg.mul_(1 - weight).add_(current[key].to(avg.device, torch.float64), alpha=weight)
                else:
                    avg.copy_(current[key])

    @torch.no_grad()
    def validate(self) -> float | None:
        loader = self.data.valid
        if loader is None:
            return None
        self.model.eval()
        total = torch.zeros(2, dtype=torch.float64, device=self.device)  # loss sum, frames
        for batch in loader:
            loss, stats = self.compute_loss(batch, training=False)
            total += torch.tensor([loss.item(), stats["frames"]], dtype=torch.float64, device=self.device)
        dist_utils.all_reduce_sum(total, self.world)
        return (total[0] / total[1].clamp(min=1)).item()

    # ---- the loop ----------------------------------------------------------------------------------

    def fit(self) -> TrainState:
        config = self.config
        self.exp_dir.mkdir(parents=True, exist_ok=True)
        self.resume()
        started = time.monotonic()
        out_of_time = config.max_batches is not None and self.state.batch_idx_train >= config.max_batches
        while self.state.epoch <= config.num_epochs and not out_of_time:
            epoch = self.state.epoch
            self.scheduler.step_epoch(epoch - 1)
            batches = self.data.train_batches(epoch, skip=self.state.batch_in_epoch)
            out_of_time = self.train_epoch(batches, started)
            if out_of_time:
                break
            valid_loss = self.validate()
            if valid_loss is not None and self.world.is_main:
                log.info("epoch %d: validation loss %.4f per frame", epoch, valid_loss)
                self.writer.add_scalar("valid/loss", valid_loss, self.state.batch_idx_train)
                self.state.best_valid_loss = min(self.state.best_valid_loss, valid_loss)
            self.state.epoch += 1
            self.state.batch_in_epoch = 0
            self.save(f"epoch-{epoch}.pt")
        if self.writer is not None:
            self.writer.close()
        dist_utils.cleanup(self.world)
        return self.state

    def train_epoch(self, batches: Iterator[dict[str, Any]], started: float) -> bool:
        """Train until the epoch ends (False) or the time budget is spent (True, after a checkpoint)."""
        from tqdm import tqdm

        config = self.config
        window = {"loss": 0.0, "frames": 0.0, "utterances": 0.0, "time": time.monotonic()}
        progress = tqdm(
            batches,
            desc=f"epoch {self.state.epoch}",
            disable=not self.world.is_main,
            dynamic_ncols=True,
            initial=self.state.batch_in_epoch,
        )
        skipped_cuts_before = self.state.skipped_cuts
        for batch in progress:
            # The loader counts the cuts it could not load, those of batches it dropped whole included.
            self.state.skipped_cuts = skipped_cuts_before + getattr(batches, "num_skipped", 0)
            stats = self.train_step(batch)
            self.state.batch_in_epoch += 1
            self.state.batch_idx_train += 1
            self.scheduler.step_batch(self.state.batch_idx_train)
            if self.state.batch_idx_train % config.average_period == 0:
                self.update_average()
            if stats is not None:
                window["loss"] += stats["loss"]
                window["frames"] += stats["frames"]
                window["utterances"] += stats["utterances"]
            if self.state.batch_idx_train % config.log_interval == 0 and window["frames"] > 0:
                elapsed = time.monotonic() - window["time"]
                loss = window["loss"] / window["frames"]
                lr = self.scheduler.get_last_lr()[0]
                progress.set_postfix(
                    loss=f"{loss:.3f}",
                    lr=f"{lr:.2e}",
                    batch=self.state.batch_idx_train,
                    utt_s=f"{window['utterances'] * self.world.size / max(elapsed, 1e-9):.1f}",
                )
                if self.writer is not None:
                    step = self.state.batch_idx_train
                    self.writer.add_scalar("train/loss", loss, step)
                    self.writer.add_scalar("train/lr", lr, step)
                    self.writer.add_scalar("train/skipped_batches", self.state.skipped_batches, step)
                window = {"loss": 0.0, "frames": 0.0, "utterances": 0.0, "time": time.monotonic()}
            if self.state.batch_idx_train % config.save_every_n == 0:
                self.save(f"checkpoint-{self.state.batch_idx_train}.pt")
            if config.max_batches is not None and self.state.batch_idx_train >= config.max_batches:
                log.info("reached %d batches; saving and stopping", config.max_batches)
                if self.state.batch_idx_train % config.save_every_n != 0:
                    self.save(f"checkpoint-{self.state.batch_idx_train}.pt")
                progress.close()
                return True
            if config.max_minutes is not None and dist_utils.any_true(
                time.monotonic() - started > 60 * config.max_minutes, self.world
            ):
                log.info("time budget of %.1f minutes spent; saving and stopping", config.max_minutes)
                self.save(f"checkpoint-{self.state.batch_idx_train}.pt")
                progress.close()
                return True
        progress.close()
        self.state.skipped_cuts = skipped_cuts_before + getattr(batches, "num_skipped", 0)
        return False


def train(config: TrainConfig) -> TrainState:
    return Trainer(config).fit()


def make_data(config: TrainConfig, tokenizer: Tokenizer, world: dist_utils.World, model: AsrModel) -> TrainingData:
    """The run's :class:`TrainingData`: ``world``'s share of the batches, cuts filtered for ``model``."""

    def output_frames(num_frames: int) -> int:
        return int(model.encoder_output_lengths(torch.tensor([num_frames]))[0])

    data_config = DataConfig(
        max_duration=config.max_duration,
        num_workers=config.num_workers,
        spec_augment=config.spec_augment,
        on_the_fly_features=None if config.on_the_fly_feats else False,
        seed=config.seed,
    )
    return TrainingData(
        data_config,
        tokenizer,
        config.train_cuts,
        config.valid_cuts,
        output_frames,
        noise_cuts=config.noise_cuts,
        world_size=world.size,
        rank=world.rank,
    )
