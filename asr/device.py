"""Which torch device a command runs on; shared by training and inference, so neither imports the other."""

from __future__ import annotations

import torch


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``"auto"`` is GPU ``local_rank`` (the process's GPU under ``torchrun``) when CUDA is available, else
    the CPU; any other name (``"cpu"``, ``"cuda"``, ``"cuda:1"``) is taken as torch spells it."""
    if name == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(name)
