#!/usr/bin/env bash
# AISHELL-1 decoding of a model trained by train.sh, scored by character error rate (CER). Stages:
#   0  the checkpoint to decode: epoch-$epoch.pt, averaged over the last $avg epochs (icefall's
#      --epoch/--avg; with --use-averaged-model, the running average between two epoch checkpoints)
#   1  asr decode --chars of each --test-sets part -> $exp_dir/decode-$method/<set>/{hyps.txt,refs.txt,errs.txt},
#      scored by character (AISHELL transcripts have no spaces between words), then a table of the CER
#      per test set (also in $exp_dir/decode-$method/cer-summary.txt)
# Anything after `--` goes to `asr decode` unchanged, e.g. `decode.sh -- --max-frames 20000`.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)

stage=0
stop_stage=100
data_dir=$repo/data/aishell
exp_dir=$repo/exp/aishell
method=greedy_search
beam_size=4
epoch=30
avg=9
use_averaged_model=true
checkpoint=
chunk_size=0
left_context_frames=
test_sets="dev test"

usage="usage: $0 [--stage N] [--stop-stage M] [options] [-- asr-decode-options]
  --stage, --stop-stage   first and last stage to run ($stage, $stop_stage)
  --data-dir DIR          prepare.sh's output, holding fbank/ ($data_dir)
  --exp-dir DIR           train.sh's checkpoints; results go to EXP_DIR/decode-METHOD/SET/ ($exp_dir)
  --method M              greedy_search | modified_beam_search | ctc_greedy_search | ctc_prefix_beam_search ($method)
  --beam-size K           beam of the beam searches ($beam_size)
  --epoch E               decode epoch-E.pt of EXP_DIR ($epoch)
  --avg A                 averaged over the last A epochs ($avg)
  --use-averaged-model B  true: the running model average between epoch-(E-A).pt and epoch-E.pt (icefall's
                          default); false: the mean of epoch-(E-A+1).pt ... epoch-E.pt ($use_averaged_model)
  --checkpoint PATH       decode this checkpoint (or a directory's newest) instead of --epoch/--avg
  --chunk-size C          causal models: decode chunk by chunk, C frames at 50 Hz (0 = full context, $chunk_size)
  --left-context-frames L causal models: left context in 50 Hz frames (default: the model's)
  --test-sets \"S ...\"     parts to decode ($test_sets)
Options after '--' are passed to asr decode (e.g. -- --max-frames 20000)."

. "$repo/recipes/parse_options.sh"
extra_args=("$@")
for name in stage stop_stage epoch avg chunk_size beam_size; do
  if ! [[ ${!name} =~ ^-?[0-9]+$ ]]; then
    echo "$0: --${name//_/-} takes an integer, not '${!name}'" >&2
    exit 1
  fi
done
case "$use_averaged_model" in
  true | false) ;;
  *) echo "$0: --use-averaged-model takes true or false, not '$use_averaged_model'" >&2; exit 1 ;;
esac
# icefall's method names, and the names asr decode uses for them
case "$method" in
  greedy_search | greedy) method=greedy_search asr_method=greedy ;;
  modified_beam_search) asr_method=modified_beam_search ;;
  ctc_greedy_search | ctc_greedy) method=ctc_greedy_search asr_method=ctc_greedy ;;
  ctc_prefix_beam_search) asr_method=ctc_prefix_beam_search ;;
  *)
    echo "$0: unknown --method '$method' (greedy_search, modified_beam_search, ctc_greedy_search," \
      "ctc_prefix_beam_search)" >&2
    exit 1
    ;;
esac

log() {
  echo "$(date '+%Y-%m-%d %H:%M:%S') (aishell/decode.sh:${BASH_LINENO[0]}) $*"
}

if ! command -v asr >/dev/null; then
  echo "$0: the 'asr' command is not on PATH (activate the virtual environment: . .venv/bin/activate)" >&2
  exit 1
fi

fbank_dir=$data_dir/fbank
read -r -a test_list <<<"$test_sets"
if [ ${#test_list[@]} -eq 0 ]; then
  echo "$0: --test-sets is empty" >&2
  exit 1
fi

if [ -n "$left_context_frames" ] && [ "$chunk_size" = 0 ]; then
  echo "$0: --left-context-frames applies to chunk-by-chunk decoding: give --chunk-size too" >&2
  exit 1
fi
suffix=
streaming=()
if [ "$chunk_size" != 0 ]; then
  streaming=(--chunk-size "$chunk_size")
  suffix=-chunk-$chunk_size
  if [ -n "$left_context_frames" ]; then
    streaming+=(--left-context-frames "$left_context_frames")
    suffix=$suffix-left-$left_context_frames
  fi
fi
results_dir=$exp_dir/decode-$method$suffix

need_file() {  # need_file PATH WHY: exit with an error naming PATH unless it is a file
  if [ ! -f "$1" ]; then
    echo "$0: missing $1 ($2)" >&2
    exit 1
  fi
}

# What stage 1 decodes: asr decode's --checkpoint (and --average-from), and how to describe it.
average_from=()
if [ -n "$checkpoint" ]; then
  if [ ! -e "$checkpoint" ]; then
    echo "$0: missing $checkpoint (--checkpoint)" >&2
    exit 1
  fi
  decode_checkpoint=$checkpoint
  described="checkpoint $checkpoint"
else
  if [ ! -d "$exp_dir" ]; then
    echo "$0: missing experiment directory $exp_dir (run train.sh, or pass --exp-dir)" >&2
    exit 1
  fi
  if [ "$epoch" -lt 1 ] || [ "$avg" -lt 1 ]; then
    echo "$0: --epoch and --avg must be at least 1 (got $epoch and $avg)" >&2
    exit 1
  fi
  decode_checkpoint=$exp_dir/epoch-$epoch.pt
  described="epoch $epoch, avg $avg"
  if [ "$use_averaged_model" = true ]; then
    start=$((epoch - avg))
    if [ "$start" -lt 1 ]; then
      echo "$0: --use-averaged-model true averages between epoch-(E-A).pt and epoch-E.pt, so --avg" \
        "must be below --epoch (got --epoch $epoch --avg $avg); or pass --use-averaged-model false" >&2
      exit 1
    fi
    average_from=(--average-from "$exp_dir/epoch-$start.pt")
    described="$described, averaged model"
  elif [ "$avg" -gt 1 ]; then
    decode_checkpoint=$exp_dir/averaged/epoch-$epoch-avg-$avg.pt
  fi
fi

if [ "$stage" -le 0 ] && [ "$stop_stage" -ge 0 ] && [ -z "$checkpoint" ]; then
  need_file "$exp_dir/epoch-$epoch.pt" "train.sh writes one per epoch; is --epoch $epoch trained?"
  if [ ${#average_from[@]} -gt 0 ]; then
    need_file "${average_from[1]}" "--use-averaged-model true with --epoch $epoch --avg $avg needs it"
    log "Stage 0: the model averaged from $(basename "${average_from[1]}") to epoch-$epoch.pt"
  elif [ "$avg" -gt 1 ]; then
    inputs=()
    for ((e = epoch - avg + 1; e <= epoch; e++)); do
      need_file "$exp_dir/epoch-$e.pt" "--avg $avg averages epochs $((epoch - avg + 1)) to $epoch"
      inputs+=("$exp_dir/epoch-$e.pt")
    done
    log "Stage 0: average epochs $((epoch - avg + 1)) to $epoch -> $decode_checkpoint"
    mkdir -p "$(dirname "$decode_checkpoint")"
    python "$repo/tools/average_checkpoints.py" "$decode_checkpoint" "${inputs[@]}"
  fi
fi

if [ "$stage" -le 1 ] && [ "$stop_stage" -ge 1 ]; then
  if [ -z "$checkpoint" ]; then
    need_file "$decode_checkpoint" "run stage 0 first"
  fi
  for part in "${test_list[@]}"; do
    need_file "$fbank_dir/aishell_cuts_$part.jsonl.gz" "run prepare.sh stages 1-3 with part $part"
  done
  summary=()
  for part in "${test_list[@]}"; do
    dir=$results_dir/$part
    mkdir -p "$dir"
    log "Stage 1: decode $part with $method${streaming[*]:+ ${streaming[*]}} ($described) -> $dir"
    # stdout is one '<id>\t<hyp>' line per utterance, then the CER line
    asr decode --checkpoint "$decode_checkpoint" "${average_from[@]}" \
      --cuts "$fbank_dir/aishell_cuts_$part.jsonl.gz" --method "$asr_method" --beam "$beam_size" --chars \
      "${streaming[@]}" --results-dir "$dir" "${extra_args[@]}" >"$dir/decode.log"
    summary+=("$(printf '%-12s %s' "$part" "$(tail -n 1 "$dir/decode.log")")")
  done
  {
    echo "CER per test set: $method$suffix, $described"
    printf '%s\n' "${summary[@]}"
  } | tee "$results_dir/cer-summary.txt"
fi

log "Done (stages $stage to $stop_stage)"
