"""Losses without k2: CTC, the full RNN-T loss, and pruned RNN-T with k2's names and semantics
(``from asr import losses as k2`` is enough for icefall's transducer code)."""

from asr.losses.ctc import ctc_loss
from asr.losses.mutual_information import mutual_information_recursion
from asr.losses.pruned_rnnt import (
    do_rnnt_pruning,
    get_rnnt_logprobs,
    get_rnnt_logprobs_pruned,
    get_rnnt_logprobs_smoothed,
    get_rnnt_prune_ranges,
    rnnt_loss_pruned,
    rnnt_loss_simple,
    rnnt_loss_smoothed,
)
from asr.losses.rnnt import RNNT_TYPES, fix_for_boundary, get_rnnt_logprobs_joint, rnnt_loss

__all__ = [
    "RNNT_TYPES",
    "ctc_loss",
    "do_rnnt_pruning",
    "fix_for_boundary",
    "get_rnnt_logprobs",
    "get_rnnt_logprobs_joint",
    "get_rnnt_logprobs_pruned",
    "get_rnnt_logprobs_smoothed",
    "get_rnnt_prune_ranges",
    "mutual_information_recursion",
    "rnnt_loss",
    "rnnt_loss_pruned",
    "rnnt_loss_simple",
    "rnnt_loss_smoothed",
]
