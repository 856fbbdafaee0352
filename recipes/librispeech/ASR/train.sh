#!/usr/bin/env bash
# LibriSpeech training (icefall's Zipformer transducer + CTC recipe), after prepare.sh. Stages:
#   0  the training and validation CutSets (asr train takes one of each): the fbank cuts of
#      --train-parts concatenated and shuffled (the sampler only shuffles within a window of
#      cuts, and the parts are stored in speaker order), those of --valid-parts concatenated
#   1  asr train --preset librispeech (torchrun for --world-size > 1)  -> $exp_dir
# Anything after `--` goes to `asr train` unchanged, e.g. `train.sh -- --base-lr 0.04 --max-minutes 60`.
# Training resumes from the newest checkpoint in $exp_dir, so rerunning after a stop continues it.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)

stage=0
stop_stage=100
data_dir=$repo/data/librispeech
exp_dir=$repo/exp/librispeech
lang_dir=
encoder=zipformer-medium
causal=false
num_epochs=30
max_duration=1000
train_parts="train-clean-100 train-clean-360 train-other-500"
valid_parts="dev-clean dev-other"
world_size=1
musan=auto

usage="usage: $0 [--stage N] [--stop-stage M] [options] [-- asr-train-options]
  --stage, --stop-stage  first and last stage to run ($stage, $stop_stage)
  --data-dir DIR         prepare.sh's output: fbank/, lang_bpe_*/ ($data_dir)
  --exp-dir DIR          checkpoints and tensorboard logs ($exp_dir)
  --lang-dir DIR         BPE lang dir (default: DATA_DIR/lang_bpe_500)
  --encoder NAME         encoder preset ($encoder; see asr train --help)
  --causal B             chunk-causal (streaming) encoder (true|false, $causal)
  --num-epochs E         epochs to train ($num_epochs)
  --max-duration S       seconds of audio per batch and process ($max_duration)
  --train-parts \"P ...\"  training parts, fbank cuts of prepare.sh ($train_parts)
  --valid-parts \"P ...\"  validation parts ($valid_parts)
  --world-size N         processes (GPUs) on this machine; N > 1 trains under torchrun ($world_size)
  --musan M              mix MUSAN noise: auto (if prepare.sh made DATA_DIR/fbank/musan_cuts.jsonl.gz),
                         true (required), false ($musan)
Options after '--' are passed to asr train (e.g. -- --base-lr 0.04 --max-minutes 60)."

. "$repo/recipes/parse_options.sh"
extra_args=("$@")
if ! [[ $stage =~ ^-?[0-9]+$ && $stop_stage =~ ^-?[0-9]+$ ]]; then
  echo "$0: --stage and --stop-stage take integers, not '$stage' and '$stop_stage'" >&2
  exit 1
fi
if ! [[ $world_size =~ ^[1-9][0-9]*$ ]]; then
  echo "$0: --world-size takes a positive integer, not '$world_size'" >&2
  exit 1
fi
case "$causal" in true | false) ;; *) echo "$0: --causal takes true or false, not '$causal'" >&2; exit 1 ;; esac
case "$musan" in auto | true | false) ;; *) echo "$0: --musan takes auto, true or false, not '$musan'" >&2; exit 1 ;; esac

log() {
  echo "$(date '+%Y-%m-%d %H:%M:%S') (librispeech/train.sh:${BASH_LINENO[0]}) $*"
}

if ! command -v asr >/dev/null; then
  echo "$0: the 'asr' command is not on PATH (activate the virtual environment: . .venv/bin/activate)" >&2
  exit 1
fi

fbank_dir=$data_dir/fbank
lang_dir=${lang_dir:-$data_dir/lang_bpe_500}
read -r -a train_list <<<"$train_parts"
read -r -a valid_list <<<"$valid_parts"
if [ ${#train_list[@]} -eq 0 ]; then
  echo "$0: --train-parts is empty" >&2
  exit 1
fi

part_cuts() {  # the fbank CutSet prepare.sh wrote for a part
  echo "$fbank_dir/librispeech_cuts_$1.jsonl.gz"
}

# The CutSets to train and validate on: parts joined by '+'; a single validation part is used as it is.
joined() {
  local IFS=+
  echo "$*"
}
train_cuts=$fbank_dir/librispeech_cuts_$(joined "${train_list[@]}")-shuf.jsonl.gz
valid_cuts=
if [ ${#valid_list[@]} -gt 0 ]; then
  valid_cuts=$fbank_dir/librispeech_cuts_$(joined "${valid_list[@]}").jsonl.gz
fi

# combine_parts OUT SHUFFLE PART...: the parts' fbank cuts, one JSON line each, concatenated (and with
# SHUFFLE=true shuffled with a fixed seed) into OUT; skipped when OUT is newer than every input.
combine_parts() {
  local out=$1 shuffle=$2
  shift 2
  local inputs=() up_to_date=true part
  for part in "$@"; do
    inputs+=("$(part_cuts "$part")")
    [ -f "$out" ] && [ "$out" -nt "${inputs[-1]}" ] || up_to_date=false
  done
  if [ "$up_to_date" = true ]; then
    log "Stage 0: $out done before, skipping"
    return 0
  fi
  if [ "$shuffle" = true ]; then
    log "Stage 0: $* shuffled -> $out"
    gunzip -c "${inputs[@]}" | python -c '
import random, sys
lines = sys.stdin.readlines()
random.Random(0).shuffle(lines)
sys.stdout.writelines(lines)' | gzip -c >"$out.tmp"
  else
    log "Stage 0: $* -> $out"
    gunzip -c "${inputs[@]}" | gzip -c >"$out.tmp"
  fi
  mv "$out.tmp" "$out"
}

# Every input of the stages to run is checked before any of them starts.
musan_cuts=$fbank_dir/musan_cuts.jsonl.gz
if [ "$stage" -le 0 ] && [ "$stop_stage" -ge 0 ]; then
  for part in "${train_list[@]}" "${valid_list[@]}"; do
    if [ ! -f "$(part_cuts "$part")" ]; then
      echo "$0: missing $(part_cuts "$part"): run prepare.sh (stages 1-3) with part $part first" >&2
      exit 1
    fi
  done
fi
if [ "$stage" -le 1 ] && [ "$stop_stage" -ge 1 ]; then
  if [ "$stage" -ge 1 ]; then  # else stage 0 makes them
    for needed in "$train_cuts" ${valid_cuts:+"$valid_cuts"}; do
      if [ ! -f "$needed" ]; then
        echo "$0: missing $needed: run stage 0 first" >&2
        exit 1
      fi
    done
  fi
  if [ ! -d "$lang_dir" ]; then
    echo "$0: missing lang dir $lang_dir: run prepare.sh stage 4 or pass --lang-dir" >&2
    exit 1
  elif [ ! -f "$lang_dir/bpe.model" ]; then
    echo "$0: lang dir $lang_dir has no bpe.model: run prepare.sh stage 4 or pass --lang-dir" >&2
    exit 1
  fi
  if [ "$musan" = true ] && [ ! -f "$musan_cuts" ]; then
    echo "$0: --musan true but $musan_cuts is missing: run prepare.sh stages 2-3 with MUSAN in --dl-dir" >&2
    exit 1
  fi
fi

if [ "$stage" -le 0 ] && [ "$stop_stage" -ge 0 ]; then
  combine_parts "$train_cuts" true "${train_list[@]}"
  if [ ${#valid_list[@]} -gt 1 ]; then
    combine_parts "$valid_cuts" false "${valid_list[@]}"
  fi
fi

if [ "$stage" -le 1 ] && [ "$stop_stage" -ge 1 ]; then
  noise=()
  if [ "$musan" != false ] && [ -f "$musan_cuts" ]; then
    noise=(--noise-cuts "$musan_cuts")
    log "Stage 1: mixing MUSAN noise from $musan_cuts"
  fi
  causal_flag=--no-causal
  if [ "$causal" = true ]; then
    causal_flag=--causal
  fi
  launcher=(asr train)
  if [ "$world_size" -gt 1 ]; then
    if ! command -v torchrun >/dev/null; then
      echo "$0: --world-size $world_size needs torchrun on PATH" >&2
      exit 1
    fi
    launcher=(torchrun --standalone --nproc_per_node "$world_size" -m asr train)
  fi
  log "Stage 1: train $encoder (causal=$causal) on ${train_list[*]}, $world_size process(es) -> $exp_dir"
  "${launcher[@]}" --preset librispeech --encoder "$encoder" "$causal_flag" \
    --train-cuts "$train_cuts" ${valid_cuts:+--valid-cuts "$valid_cuts"} --lang-dir "$lang_dir" \
    --exp-dir "$exp_dir" --num-epochs "$num_epochs" --max-duration "$max_duration" \
    "${noise[@]}" "${extra_args[@]}"
fi

log "Done (stages $stage to $stop_stage)"
