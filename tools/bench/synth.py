"""Speed of the offline TTS corpus builder (`asr data synth`), per engine and for the default mix.

Synthesizes ``--num-utts`` utterances with each engine alone, festival also with one utterance per
process (to show what batching buys), then the default engine mix, all in one run on the same
machine. Prints utterances/second and audio seconds per wall second, and the projected time of
10,000 utterances twice: from the wall time (what this run saw, other load included) and from the
CPU time of all processes divided by the workers (what otherwise idle cores would take). Writes
the numbers as JSON.

    .venv/bin/python tools/bench/synth.py [--num-utts 200] [--num-workers 2] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import soundfile

from asr.data import synth
from asr.data.sentences import load_sentences

TARGET_UTTS = 10_000
TARGET_SECONDS = 15 * 60


def cpu_seconds() -> float:
    """User + system CPU time of this process and of every finished descendant (workers, engines, sox)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def measure(name, sentences, num_utts, seed, engines, mix, num_workers, festival_batch) -> dict:
    plan = synth.plan_corpus(sentences, num_utts, seed, engines, mix)
    with tempfile.TemporaryDirectory(prefix="bench-synth-") as out:
        start, cpu_start = time.perf_counter(), cpu_seconds()
        errors = synth.run_plan(plan, Path(out), num_workers, festival_batch, progress=False)
        wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
        audio = sum(soundfile.info(str(Path(out) / u.relpath)).duration for u in plan if u.id not in errors)
    done = len(plan) - len(errors)
    row = {
        "name": name,
        "utterances": done,
        "failed": len(errors),
        "wall_s": wall,
        "audio_s": audio,
        "utts_per_s": done / wall,
        "audio_s_per_wall_s": audio / wall,
        "mean_utt_s": audio / max(done, 1),
        "projected_10k_s": TARGET_UTTS * wall / max(done, 1),
        "cpu_s_per_utt": cpu / max(done, 1),
        # Wall time on num_workers otherwise idle cores: the CPU time shared out, contention aside.
        "projected_10k_s_idle_cores": TARGET_UTTS * cpu / max(done, 1) / num_workers,
    }
    print(
        f"{name:<24} {done:>5} {wall:>8.1f} {row['utts_per_s']:>8.2f} {row['audio_s_per_wall_s']:>9.1f}"
        f" {row['mean_utt_s']:>7.2f} {row['projected_10k_s'] / 60:>9.1f} {row['cpu_s_per_utt']:>9.3f}"
        f" {row['projected_10k_s_idle_cores'] / 60:>10.1f}",
        flush=True,
    )
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-utts", type=int, default=200, help="utterances per measurement")
    parser.add_argument("--num-workers", type=int, default=synth.default_num_workers())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engines", default=",".join(synth.ENGINES), help="engines to measure")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "synth.json")
    args = parser.parse_args(argv)
    engines = [e for e in args.engines.split(",") if e]
    synth.check_engines(engines)
    sentences = load_sentences()
    load_before = os.getloadavg()[0]

    print(f"{args.num_utts} utterances per row, {args.num_workers} workers, load average {load_before:.1f} at start")
    header = ("engine", "utts", "wall s", "utt/s", "audio/wall", "mean s", "10k min", "cpu s/utt", "idle 10k")
    widths = (24, 5, 8, 8, 9, 7, 9, 9, 10)
    print(" ".join(f"{h:<{w}}" if i == 0 else f"{h:>{w}}" for i, (h, w) in enumerate(zip(header, widths))))

    def row(name, num_utts, engines, mix=None, festival_batch=synth.FESTIVAL_BATCH):
        return measure(name, sentences, num_utts, args.seed, engines, mix, args.num_workers, festival_batch)

    rows = [row(engine, args.num_utts, [engine]) for engine in engines]
    if "festival" in engines:
        # Unbatched festival is slow, and its rate per utterance needs no large sample.
        rows.append(row("festival (1 per process)", max(10, args.num_utts // 5), ["festival"], festival_batch=1))
    mix = {e: w for e, w in synth.DEFAULT_MIX.items() if e in engines}
    overall = row("default mix", args.num_utts, engines, mix)
    rows.append(overall)

    # The mix's projection from the single-engine rows (costs add by share), beside the measured one.
    per_engine = {r["name"]: r for r in rows if r["name"] in engines}
    total_share = sum(mix.values())
    seconds_per_utt = {e: per_engine[e]["wall_s"] / max(per_engine[e]["utterances"], 1) for e in mix}
    from_parts = sum(mix[e] / total_share * TARGET_UTTS * seconds_per_utt[e] for e in mix)
    idle = overall["projected_10k_s_idle_cores"]
    print(
        f"\ndefault mix {mix}: 10,000 utterances ({overall['mean_utt_s'] * TARGET_UTTS / 3600:.1f} h of audio)\n"
        f"  {overall['projected_10k_s'] / 60:.1f} min from this run's wall time"
        f" ({from_parts / 60:.1f} min adding up the per-engine rows; load average {load_before:.1f} at start)\n"
        f"  {idle / 60:.1f} min from its CPU time on {args.num_workers} idle cores:"
        f" the {TARGET_SECONDS // 60} min target is {'met' if idle < TARGET_SECONDS else 'MISSED'}"
    )
    result = {
        "benchmark": "synth",
        "num_utts": args.num_utts,
        "num_workers": args.num_workers,
        "cpu_count": os.cpu_count(),
        "load_average_start": load_before,
        "load_average_after": os.getloadavg()[0],
        "machine": platform.platform(),
        "mix": mix,
        "festival_batch": synth.FESTIVAL_BATCH,
        "rows": rows,
        "projected_10k_s_mix_measured": overall["projected_10k_s"],
        "projected_10k_s_mix_from_engines": from_parts,
        "projected_10k_s_mix_idle_cores": idle,
        "target_10k_s": TARGET_SECONDS,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
