"""Named starting points for ``asr train``: values of :class:`asr.training.trainer.TrainConfig` fields.

Any option given on the command line overrides the preset's value.
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    # The offline recipe on 2 CPU cores: a few-million-parameter Zipformer, short schedule. Measured on
    # the synth corpus (recipes/synth/RESULTS.md): smaller batches learn more per second of audio (50 s beat 100 s; 30 s
    # beat 50 s by 1.1 WER at equal audio, with lr_batches and warmup_batches scaled by 50/30 so the
    # schedules follow the audio seen). schedule_speedup 2400 makes each 30 s batch count as 120 of
    # icefall's 600 s batches (30 * 2400 / 600) for the model's regularisation schedules (layer skipping,
    # dropout, balancers): they end at an adjusted count of 20,000 (the last at 50,000), reached after 170
    # batches (420) instead of 400,000 (a million), so that a run of minutes does not stop with them near
    # their initial values. SpecAugment is off: such a run is far from overfitting. Both halved the batches the
    # transducer spends on the label prior before it uses the audio.
    "synth-cpu": {
        "encoder": "zipformer-xs",
        "max_duration": 30.0,
        "num_epochs": 30,
        "base_lr": 0.045,
        "lr_batches": 2500.0,
        "lr_epochs": 2.0,
        "warmup_batches": 333.0,
        "warm_step": 500,
        "schedule_speedup": 2400.0,
        "spec_augment": False,
        "save_every_n": 100,
        "average_period": 20,
        "num_workers": 1,
        "keep_last_k": 8,  # the recipe decodes the model averaged over the last 500 batches
    },
    # icefall's LibriSpeech Zipformer recipe (per-GPU max duration 1000 s).
    "librispeech": {"encoder": "zipformer-medium", "max_duration": 1000.0, "num_epochs": 30, "base_lr": 0.045},
    # icefall's AISHELL Zipformer recipe (characters).
    "aishell": {
        "encoder": "zipformer-medium",
        "max_duration": 1000.0,
        "num_epochs": 30,
        "base_lr": 0.045,
        "lr_epochs": 1.5,
    },
}
