"""Our Zipformer against icefall's own ``zipformer.py``, the same weights, timed side by side on the CPU.

icefall's LibriSpeech Zipformer-M encoder (``Conv2dSubsampling`` + ``Zipformer2``, the hyperparameters of
``egs/librispeech/ASR/zipformer/train.py``'s defaults, non-causal) is built from icefall's own files, given
random weights, and converted with :func:`asr.models.icefall.convert_icefall` into our ``zipformer-medium``.
Then:

1. Equality, in eval mode: two utterances of different lengths in one padded batch through ours, each utterance
   alone through icefall (our Zipformer fills each utterance's padding before every downsampling, so a padded
   utterance gets the output it gets alone; icefall mixes padding into the last downsampled frame, see
   :mod:`asr.encoders.zipformer`), and the same padded batch through icefall for the longest utterance. Every
   valid output frame must agree within ``--tolerance`` (max abs diff), in float32 and again with both models in
   float64 (where rounding is ~1e-14, so a real difference cannot hide under float32 rounding); otherwise the
   script says so and exits 1 without timing anything. The weights are icefall's initialisation plus small noise,
   so that no parameter keeps a trivial value (0, 1) that would hide a misplaced one.
2. Timing, on ``--threads`` threads, a batch of ``--batch`` x ``--frames`` fbank frames (all the same length, so
   padding plays no part): ``forward`` (eval, no grad) and ``train`` (train mode, forward + backward of
   ``output.square().mean()``). Both models' scheduled values (dropout, layer skipping, balancer probabilities,
   ...) are set to batch count ``--batch-count`` (100000: past every schedule's last point, so both run their
   final, steady-state training behaviour rather than the heavy skipping of early training). The two models run
   alternately in one process (ours, icefall, ours, icefall, ...) after one untimed warm-up step each, so load
   from other processes falls on both alike; the table gives the fastest and the median of ``--repeats`` steps
   and the ratio ours / icefall.

icefall's ``scaling.py`` imports ``k2`` (for its Swoosh activation kernels) and ``icefall.utils.torch_autocast``;
neither is installed here, so this script puts stand-ins into ``sys.modules`` before importing icefall's files:
``k2.swoosh_{l,r}{,_forward,_forward_and_deriv}`` written in plain torch (the closed forms
``SwooshL(x) = log(1 + e^(x-4)) - 0.08 x - 0.035``, ``SwooshR(x) = log(1 + e^(x-1)) - 0.08 x - 0.313261687``,
derivative ``sigmoid(x - shift) - 0.08``), and ``torch_autocast`` over ``torch.amp.autocast``. icefall's timings
are therefore those of its Python code with torch Swoosh kernels, not k2's fused ones (the JSON says so too).
icefall itself is not a dependency of ``asr``: only its files are read, from a directory given on the command line.

Getting icefall's files from a git clone or bare mirror (``encoder_interface.py`` is a symlink in the recipe dir;
the option follows it)::

    .venv/bin/python tools/bench/icefall_zipformer.py --extract-from-git path/to/icefall \\
        --icefall-dir /tmp/icefall_zipformer

or by hand::

    G="git --git-dir=path/to/icefall"; D=egs/librispeech/ASR; mkdir -p /tmp/icefall_zipformer
    for f in zipformer scaling subsampling; do $G show HEAD:$D/zipformer/$f.py > /tmp/icefall_zipformer/$f.py; done
    $G show HEAD:$D/transducer_stateless/encoder_interface.py > /tmp/icefall_zipformer/encoder_interface.py

Then::

    OMP_NUM_THREADS=1 .venv/bin/python tools/bench/icefall_zipformer.py --icefall-dir /tmp/icefall_zipformer \\
        [--threads 1 --batch 4 --frames 1000 --repeats 3 --modes forward,train]

Without ``--icefall-dir`` (or with a directory that lacks the files) it says what it needs and exits 0, so
``make bench`` passes over it.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import platform
import posixpath
import random
import statistics
import subprocess
import sys
import time
import types
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from asr.nn import swoosh_l_forward, swoosh_l_forward_and_deriv, swoosh_r_forward, swoosh_r_forward_and_deriv

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "icefall_zipformer.json"
RECIPE_DIR = "egs/librispeech/ASR/zipformer"
ICEFALL_FILES = ("zipformer.py", "scaling.py", "subsampling.py", "encoder_interface.py")
COMMIT_FILE = "ICEFALL_COMMIT"  # written by --extract-from-git, read back by later runs
OUR_PRESET = "zipformer-medium"
FEATURE_DIM = 80
PERTURBATION = 0.02  # std of the noise added to icefall's initial weights
CTC_VOCAB = 500  # the CTC head only lets the converter build a whole model; it is not run
STAND_IN_NOTE = (
    "icefall ran with torch stand-ins for k2's swoosh kernels (k2.swoosh_l/_r, *_forward, *_forward_and_deriv "
    "in plain torch) and for icefall.utils.torch_autocast"
)

# icefall's Zipformer-M: egs/librispeech/ASR/zipformer/train.py, argparse defaults as passed to Zipformer2 by
# get_encoder_model (chunk sizes and left contexts are the defaults too; a non-causal model ignores them).
ICEFALL_MEDIUM: dict[str, Any] = dict(
    output_downsampling_factor=2,
    downsampling_factor=(1, 2, 4, 8, 4, 2),
    num_encoder_layers=(2, 2, 3, 4, 3, 2),
    encoder_dim=(192, 256, 384, 512, 384, 256),
    encoder_unmasked_dim=(192, 192, 256, 256, 256, 192),
    query_head_dim=(32,),
    pos_head_dim=(4,),
    value_head_dim=(12,),
    pos_dim=48,
    num_heads=(4, 4, 4, 8, 4, 4),
    feedforward_dim=(512, 768, 1024, 1536, 1024, 768),
    cnn_module_kernel=(31, 31, 15, 15, 15, 31),
    warmup_batches=4000.0,
    causal=False,
    chunk_size=(16, 32, 64, -1),
    left_context_frames=(64, 128, 256, -1),
)


# ---- stand-ins for k2 and icefall.utils -------------------------------------------------------------------------
class _SwooshFunction(torch.autograd.Function):
    """Swoosh whose backward multiplies by the derivative computed in forward (kept as one tensor, as large
    as the input), like k2's differentiable ``swoosh_l`` / ``swoosh_r``: no autograd graph through the
    softplus. Values and derivative are ``asr.nn``'s (the closed forms above)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, forward_and_deriv: Callable[[Tensor], tuple[Tensor, Tensor]]) -> Tensor:
        y, deriv = forward_and_deriv(x)
        ctx.save_for_backward(deriv)
        return y

    @staticmethod
    def backward(ctx: Any, y_grad: Tensor) -> tuple[Tensor, None]:
        (deriv,) = ctx.saved_tensors
        return (y_grad * deriv).to(y_grad.dtype), None


def swoosh_l(x: Tensor) -> Tensor:
    """SwooshL, differentiable. ``x`` any shape; same shape out."""
    return _SwooshFunction.apply(x, swoosh_l_forward_and_deriv)


def swoosh_r(x: Tensor) -> Tensor:
    """SwooshR, differentiable. ``x`` any shape; same shape out."""
    return _SwooshFunction.apply(x, swoosh_r_forward_and_deriv)


@contextlib.contextmanager
def torch_autocast(device_type: str = "cuda", **kwargs: Any) -> Iterator[None]:
    """icefall.utils.torch_autocast: ``torch.amp.autocast(device_type, **kwargs)``. scaling.py and zipformer.py
    only use it as ``torch_autocast(enabled=False)`` (CUDA autocast off); where CUDA is absent there is no CUDA
    autocast to turn off, and torch.amp would only warn, so nothing is entered."""
    if device_type == "cuda" and not torch.cuda.is_available():
        yield
        return
    with torch.amp.autocast(device_type=device_type, **kwargs):
        yield


def install_stand_ins() -> None:
    """Put the ``k2`` and ``icefall.utils`` stand-ins into ``sys.modules`` (before icefall's files import them)."""
    k2 = types.ModuleType("k2")
    k2.__doc__ = "torch stand-ins for k2's swoosh kernels (tools/bench/icefall_zipformer.py)"
    for fn in (
        swoosh_l,
        swoosh_l_forward,
        swoosh_l_forward_and_deriv,
        swoosh_r,
        swoosh_r_forward,
        swoosh_r_forward_and_deriv,
    ):
        setattr(k2, fn.__name__, fn)
    icefall = types.ModuleType("icefall")
    icefall.__path__ = []  # a package, so that `from icefall.utils import ...` resolves
    utils = types.ModuleType("icefall.utils")
    utils.torch_autocast = torch_autocast
    icefall.utils = utils
    sys.modules.update({"k2": k2, "icefall": icefall, "icefall.utils": utils})


# ---- icefall's files ------------------------------------------------------------------------------------------
def missing_files(icefall_dir: Path | None) -> list[str]:
    """The files of :data:`ICEFALL_FILES` not in ``icefall_dir`` (all of them without a dir)."""
    if icefall_dir is None or not icefall_dir.is_dir():
        return list(ICEFALL_FILES)
    return [name for name in ICEFALL_FILES if not (icefall_dir / name).is_file()]


def _git(git_dir: Path, *args: str) -> str:
    """stdout of ``git --git-dir=git_dir args...``, unstripped (file contents are written as they are)."""
    return subprocess.run(["git", f"--git-dir={git_dir}", *args], check=True, capture_output=True, text=True).stdout


def extract_from_git(git_dir: Path, rev: str, out_dir: Path) -> str:
    """Write icefall's recipe files at ``rev`` of the repository ``git_dir`` (a bare mirror or a ``.git``) into
    ``out_dir``, following symlinks within the tree; returns the commit hash (also written to ``ICEFALL_COMMIT``)."""
    commit = _git(git_dir, "rev-parse", f"{rev}^{{commit}}").strip()
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ICEFALL_FILES:
        path = f"{RECIPE_DIR}/{name}"
        for _ in range(8):  # a symlink's blob is its target, relative to the link's folder
            if _git(git_dir, "ls-tree", commit, path).split()[0] != "120000":
                break
            target = _git(git_dir, "show", f"{commit}:{path}").strip()
            path = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
        (out_dir / name).write_text(_git(git_dir, "show", f"{commit}:{path}"))
    (out_dir / COMMIT_FILE).write_text(commit + "\n")
    return commit


def icefall_commit(icefall_dir: Path, given: str | None) -> str | None:
    """``--icefall-commit``, else the one ``--extract-from-git`` recorded, else the HEAD of a checkout holding
    the dir, else None."""
    if given:
        return given
    if (icefall_dir / COMMIT_FILE).is_file():
        return (icefall_dir / COMMIT_FILE).read_text().strip()
    result = subprocess.run(["git", "-C", str(icefall_dir), "rev-parse", "HEAD"], capture_output=True, text=True)
    return (result.stdout.strip() or None) if result.returncode == 0 else None


def import_icefall(icefall_dir: Path) -> tuple[types.ModuleType, types.ModuleType]:
    """icefall's ``zipformer`` and ``subsampling`` modules from ``icefall_dir``, with the stand-ins installed."""
    install_stand_ins()
    sys.path.insert(0, str(icefall_dir))  # zipformer.py does `from scaling import ...`
    with warnings.catch_warnings():  # scaling.py's torch.cuda.amp.custom_fwd/bwd are deprecated in torch >= 2.4
        warnings.simplefilter("ignore", FutureWarning)
        return importlib.import_module("zipformer"), importlib.import_module("subsampling")


def pad_mask(lengths: Tensor, max_len: int) -> Tensor:
    """``(N, max_len)``, True at padded frames (as icefall's ``make_pad_mask``)."""
    return torch.arange(max_len, device=lengths.device) >= lengths.unsqueeze(-1)


class IcefallEncoder(nn.Module):
    """icefall's encoder as its ``AsrModel`` holds it (``encoder_embed``, ``encoder``), so that the state dict's
    keys are a checkpoint's; ``forward`` does what ``AsrModel.forward_encoder`` does."""

    def __init__(self, zipformer: types.ModuleType, subsampling: types.ModuleType) -> None:
        super().__init__()
        # As train.py's get_encoder_embed / get_encoder_model.
        self.encoder_embed = subsampling.Conv2dSubsampling(
            in_channels=FEATURE_DIM,
            out_channels=ICEFALL_MEDIUM["encoder_dim"][0],
            dropout=zipformer.ScheduledFloat((0.0, 0.3), (20000.0, 0.1)),
        )
        self.encoder = zipformer.Zipformer2(
            **ICEFALL_MEDIUM, dropout=zipformer.ScheduledFloat((0.0, 0.3), (20000.0, 0.1))
        )

    def forward(self, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor]:
        """``x`` ``(N, T, 80)``, ``x_lens`` ``(N,)``; returns ``(N, T', 512)`` and ``(N,)``."""
        x, x_lens = self.encoder_embed(x, x_lens)
        mask = pad_mask(x_lens, x.shape[1])
        y, y_lens = self.encoder(x.permute(1, 0, 2), x_lens, mask)  # Zipformer2 is time-first: (T, N, C)
        return y.permute(1, 0, 2), y_lens


def set_batch_count(model: nn.Module, batch_count: float) -> None:
    """Every module with a ``batch_count`` (icefall's ScheduledFloat, Balancer, ...; ours alike) gets it, as
    icefall's train.py and our trainer's ``set_batch_count`` do."""
    for module in model.modules():
        if hasattr(module, "batch_count"):
            module.batch_count = batch_count


# ---- the models ----------------------------------------------------------------------------------------------
def _per_stack(value: Any) -> tuple[Any, ...]:
    """A per-stack field with one entry per stack; one value (``32`` or ``(32,)``) stands for every stack."""
    values = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    return values * len(ICEFALL_MEDIUM["downsampling_factor"]) if len(values) == 1 else values


def check_preset() -> None:
    """Our preset's architecture must be icefall's medium one (guards against either drifting)."""
    from asr.encoders.zipformer import PRESETS

    ours = PRESETS[OUR_PRESET]
    fields = ("downsampling_factor", "num_encoder_layers", "encoder_dim", "encoder_unmasked_dim", "query_head_dim")
    fields += ("pos_head_dim", "value_head_dim", "pos_dim", "num_heads", "feedforward_dim", "cnn_module_kernel")
    for field in fields + ("warmup_batches", "output_downsampling_factor"):
        if _per_stack(getattr(ours, field)) != _per_stack(ICEFALL_MEDIUM[field]):
            raise SystemExit(f"{OUR_PRESET}.{field} = {getattr(ours, field)}, icefall's has {ICEFALL_MEDIUM[field]}")


def build_models(icefall_dir: Path, seed: int) -> tuple[nn.Module, nn.Module]:
    """``(ours, icefall)`` with the same random weights, in eval mode."""
    from asr.models.icefall import convert_icefall

    zipformer, subsampling = import_icefall(icefall_dir)
    torch.manual_seed(seed)
    icefall = IcefallEncoder(zipformer, subsampling)
    # Move every parameter off its initial value (many start at 0, 1 or a constant), so that each one counts
    # in the equality check. Not further: at 0.05 the deep random network amplifies float32 rounding to ~2e-4.
    with torch.no_grad():
        for p in icefall.parameters():
            p.add_(PERTURBATION * torch.randn_like(p))
    state = dict(icefall.state_dict())
    # convert_icefall builds a whole model and reads its head sizes from head tensors: a CTC head is enough.
    g = torch.Generator().manual_seed(seed)
    width = max(ICEFALL_MEDIUM["encoder_dim"])
    state["ctc_output.1.weight"] = 0.05 * torch.randn(CTC_VOCAB, width, generator=g)
    state["ctc_output.1.bias"] = torch.zeros(CTC_VOCAB)
    ours = convert_icefall(state, OUR_PRESET, causal=False, source="icefall Zipformer2 (random weights)").encoder
    return ours.eval(), icefall.eval()


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def equality(
    ours: nn.Module, icefall: nn.Module, lengths: tuple[int, ...], seed: int, dtype: torch.dtype = torch.float32
) -> dict[str, Any]:
    """Max abs differences of the valid output frames (eval mode, models and input in ``dtype``) for a padded batch
    of ``lengths`` fbank frames: ours on the batch vs icefall on each utterance alone, and vs icefall on the same
    batch for the longest one. Also the shorter utterances' difference from icefall's padded batch, for
    information (see the docstring)."""
    ours.eval()
    icefall.eval()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), max(lengths), FEATURE_DIM, generator=g).to(dtype)  # (N, T, 80)
    x_lens = torch.tensor(lengths)
    y, y_lens = ours(x, x_lens)
    y_ice, y_lens_ice = icefall(x, x_lens)
    if not torch.equal(y_lens, y_lens_ice):
        return {"equal": False, "why": f"output lengths differ: ours {y_lens.tolist()}, icefall {y_lens_ice.tolist()}"}
    alone, shorter = [], []
    for i, n in enumerate(lengths):
        m = int(y_lens[i])
        y_alone, _ = icefall(x[i : i + 1, :n], x_lens[i : i + 1])
        alone.append((y[i, :m] - y_alone[0, :m]).abs().max().item())
        if n < max(lengths):
            shorter.append((y[i, :m] - y_ice[i, :m]).abs().max().item())
    longest = int(torch.argmax(x_lens))
    m = int(y_lens[longest])
    batch = (y[longest, :m] - y_ice[longest, :m]).abs().max().item()
    return {
        "lengths": list(lengths),
        "output_lengths": y_lens.tolist(),
        "output_abs_max": y.abs().max().item(),
        "max_abs_diff": max(alone + [batch]),
        "max_abs_diff_vs_icefall_alone": alone,
        "max_abs_diff_longest_in_padded_batch": batch,
        "shorter_in_padded_batch_max_abs_diff_info": shorter,
    }


def step(model: nn.Module, x: Tensor, x_lens: Tensor, mode: str, seed: int) -> float:
    """Seconds of one ``forward`` (eval, no grad) or ``train`` (forward + backward) step on ``x`` ``(N, T, 80)``."""
    random.seed(seed)  # the same training randomness draws (skipping, masks) for each model's step r
    torch.manual_seed(seed)
    if mode == "forward":
        model.eval()
        with torch.no_grad():
            start = time.perf_counter()
            model(x, x_lens)
            return time.perf_counter() - start
    model.train()
    start = time.perf_counter()
    y, _ = model(x, x_lens)
    y.square().mean().backward()
    elapsed = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    return elapsed


def time_modes(
    models: dict[str, nn.Module], modes: list[str], batch: int, frames: int, repeats: int, seed: int
) -> dict[str, dict[str, list[float]]]:
    """``{mode: {name: [seconds per repeat]}}``; the models alternate within each repeat, after a warm-up each."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, frames, FEATURE_DIM, generator=g)
    x_lens = torch.full((batch,), frames)
    times: dict[str, dict[str, list[float]]] = {}
    for mode in modes:
        for model in models.values():
            step(model, x, x_lens, mode, seed)  # warm-up: allocator, lazily loaded kernels
        times[mode] = {name: [] for name in models}
        for r in range(repeats):
            for name, model in models.items():
                times[mode][name].append(step(model, x, x_lens, mode, seed + 1 + r))
                print(f"  {mode} {name} repeat {r + 1}: {times[mode][name][-1]:.3f} s", flush=True)
    return times


def cpu_model() -> str:
    """The first ``model name`` of /proc/cpuinfo (Linux), else what platform knows."""
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text().splitlines() if cpuinfo.exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages (empty where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def table(times: dict[str, dict[str, list[float]]]) -> tuple[str, dict[str, Any]]:
    """The markdown table and its figures: fastest and median seconds per model, ratios ours / icefall."""
    lines = [
        "| mode | ours fastest (s) | icefall fastest (s) | ratio fastest | ours median (s) | icefall median (s) "
        "| ratio median |",
        "|---|---|---|---|---|---|---|",
    ]
    figures: dict[str, Any] = {}
    for mode, by_model in times.items():
        best = {k: min(v) for k, v in by_model.items()}
        med = {k: statistics.median(v) for k, v in by_model.items()}
        figures[mode] = {
            "seconds": by_model,
            "fastest": best,
            "median": med,
            "ratio_fastest": best["ours"] / best["icefall"],
            "ratio_median": med["ours"] / med["icefall"],
        }
        f = figures[mode]
        lines.append(
            f"| {mode} | {best['ours']:.3f} | {best['icefall']:.3f} | {f['ratio_fastest']:.2f} | {med['ours']:.3f} "
            f"| {med['icefall']:.3f} | {f['ratio_median']:.2f} |"
        )
    return "\n".join(lines), figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--icefall-dir", type=Path, help=f"folder with icefall's {', '.join(ICEFALL_FILES)}")
    parser.add_argument("--extract-from-git", type=Path, metavar="GITDIR", help="write them from this git repo first")
    parser.add_argument("--git-rev", default="HEAD", help="revision for --extract-from-git")
    parser.add_argument("--icefall-commit", help="recorded in the JSON (default: from --extract-from-git or git)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--frames", type=int, default=1000, help="fbank frames per utterance (100 per second)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", default="forward,train")
    parser.add_argument("--batch-count", type=float, default=100000.0, help="both models' schedules' batch count")
    parser.add_argument("--check-lengths", default="331,247", help="fbank frames of the equality check's utterances")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="max abs diff allowed in the equality check")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args(argv)

    if args.extract_from_git is not None:
        if args.icefall_dir is None:
            parser.error("--extract-from-git needs --icefall-dir (where to write the files)")
        commit = extract_from_git(args.extract_from_git, args.git_rev, args.icefall_dir)
        print(f"wrote icefall {commit[:12]}'s {', '.join(ICEFALL_FILES)} to {args.icefall_dir}")
    missing = missing_files(args.icefall_dir)
    if missing:
        where = args.icefall_dir or "(no --icefall-dir given)"
        print(
            f"icefall_zipformer.py: nothing to do: needs --icefall-dir holding icefall's {RECIPE_DIR}/ files "
            f"{', '.join(ICEFALL_FILES)}; missing in {where}: {', '.join(missing)}. Get them with "
            f"--extract-from-git ICEFALL_GIT_DIR --icefall-dir DIR (see the script's docstring)."
        )
        return 0
    modes = [m for m in args.modes.split(",") if m]
    if set(modes) - {"forward", "train"}:
        parser.error(f"--modes: forward and/or train, got {args.modes}")

    torch.set_num_threads(args.threads)
    load_start = load_average()
    check_preset()
    ours, icefall = build_models(args.icefall_dir, args.seed)
    params = {"ours": num_params(ours), "icefall": num_params(icefall)}
    print(f"parameters: ours {params['ours']:,}, icefall {params['icefall']:,}")
    lengths = tuple(int(n) for n in args.check_lengths.split(","))
    # float32 is what is timed; float64 as well, where rounding is ~1e-14, so that a real difference cannot hide
    # under float32 noise. The models go back to float32 exactly (float32 -> float64 -> float32 is lossless).
    check = {"float32": equality(ours, icefall, lengths, args.seed)}
    if "why" not in check["float32"]:
        check["float64"] = equality(ours.double(), icefall.double(), lengths, args.seed, torch.float64)
        ours.float(), icefall.float()
    failed = [
        check[k].get("why") or f"{k} max abs diff {check[k]['max_abs_diff']:.3g} > {args.tolerance:g}"
        for k in check
        if "why" in check[k] or check[k]["max_abs_diff"] > args.tolerance
    ]
    if params["ours"] != params["icefall"]:
        failed.append(f"parameter counts differ: {params}")
    report: dict[str, Any] = {
        "script": "tools/bench/icefall_zipformer.py",
        "what": f"our {OUR_PRESET} vs icefall's Zipformer-M encoder (Conv2dSubsampling + Zipformer2), same weights",
        "icefall_commit": icefall_commit(args.icefall_dir, args.icefall_commit),
        "icefall_recipe": RECIPE_DIR,
        "icefall_k2": STAND_IN_NOTE,
        "icefall_hyperparameters": ICEFALL_MEDIUM,
        "our_preset": OUR_PRESET,
        "parameters": params,
        "weights": f"icefall's initialisation (seed {args.seed}) plus N(0, {PERTURBATION}^2) noise, converted",
        "equality": check,
        "tolerance": args.tolerance,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "threads": args.threads,
        "batch": args.batch,
        "frames": args.frames,
        "repeats": args.repeats,
        "batch_count": args.batch_count,
        "loss": "output.square().mean()",
        "order": "one untimed warm-up step of each, then ours, icefall, ours, icefall, ... (ABAB)",
        "loadavg_start": load_start,
    }
    if failed:
        print(f"NOT EQUAL: {'; '.join(failed)}. Nothing timed.")
        print(json.dumps(check, indent=2))
        return 1
    print(
        f"equal: max abs diff {check['float32']['max_abs_diff']:.2e} in float32, "
        f"{check['float64']['max_abs_diff']:.2e} in float64 (tolerance {args.tolerance:g})\n{STAND_IN_NOTE}"
    )

    for model in (ours, icefall):
        set_batch_count(model, args.batch_count)
    times = time_modes({"ours": ours, "icefall": icefall}, modes, args.batch, args.frames, args.repeats, args.seed)
    text, figures = table(times)
    report["results"] = figures
    report["loadavg_end"] = load_average()
    print(
        f"\n{args.batch} x {args.frames} fbank frames, {args.threads} thread(s), batch count {args.batch_count:g}; "
        f"load average {load_start} -> {report['loadavg_end']}\n"
    )
    print(text)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
