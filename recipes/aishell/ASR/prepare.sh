#!/usr/bin/env bash
# AISHELL-1 data preparation, in stages (icefall's layout of work):
#   0  download AISHELL-1 and MUSAN into $dl_dir (needs the internet)
#   1  lhotse manifests of train, dev, test       -> $data_dir/manifests
#   2  MUSAN manifests, when $dl_dir/musan exists -> $data_dir/manifests
#   3  80-dim fbank (speed perturbation on train, MUSAN too) -> $data_dir/fbank
#   4  character lang dir from the training transcripts -> $data_dir/lang_char
# Every stage skips the work it finds done (.done markers), so reruns are cheap.
# Already have the corpus? Point --dl-dir at the directory holding aishell/data_aishell (and musan/).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)

stage=0
stop_stage=100
dl_dir=$repo/data/download
data_dir=$repo/data/aishell
nj=4
parts="train dev test"
speed_perturb=true

usage="usage: $0 [--stage N] [--stop-stage M] [options]
  --stage, --stop-stage  first and last stage to run ($stage, $stop_stage)
  --dl-dir DIR           holds aishell/data_aishell/ and musan/ ($dl_dir)
  --data-dir DIR         manifests/, fbank/, lang_char/ go here ($data_dir)
  --nj N                 parallel jobs ($nj)
  --parts \"P ...\"        AISHELL parts to write ($parts); lhotse reads all three regardless
  --speed-perturb B      add 0.9/1.1 speed-perturbed copies of train (true|false, $speed_perturb)"

. "$repo/recipes/parse_options.sh"
if ! [[ $stage =~ ^-?[0-9]+$ && $stop_stage =~ ^-?[0-9]+$ ]]; then
  echo "$0: --stage and --stop-stage take integers, not '$stage' and '$stop_stage'" >&2
  exit 1
fi

log() {
  echo "$(date '+%Y-%m-%d %H:%M:%S') (aishell/prepare.sh:${BASH_LINENO[0]}) $*"
}

if ! command -v asr >/dev/null; then
  echo "$0: the 'asr' command is not on PATH (activate the virtual environment: . .venv/bin/activate)" >&2
  exit 1
fi

manifest_dir=$data_dir/manifests
fbank_dir=$data_dir/fbank
lang_dir=$data_dir/lang_char
read -r -a part_list <<<"$parts"

if [ "$stage" -le 0 ] && [ "$stop_stage" -ge 0 ]; then
  log "Stage 0: download AISHELL-1 and MUSAN into $dl_dir"
  # lhotse skips the archives whose $dl_dir/aishell/<archive>/.completed exists.
  asr data prepare download aishell --dl-dir "$dl_dir"
  if [ -f "$dl_dir/.musan_completed" ]; then
    log "Stage 0: MUSAN already in $dl_dir/musan"
  else
    asr data prepare download musan --dl-dir "$dl_dir"
  fi
fi

if [ "$stage" -le 1 ] && [ "$stop_stage" -ge 1 ]; then
  log "Stage 1: AISHELL manifests of ${parts} -> $manifest_dir"
  todo=()
  for part in "${part_list[@]}"; do
    if [ -f "$manifest_dir/.aishell_$part.done" ]; then
      log "Stage 1: $part done before, skipping"
    else
      todo+=("$part")
    fi
  done
  if [ ${#todo[@]} -gt 0 ]; then
    asr data prepare aishell --corpus-dir "$dl_dir/aishell" --out-dir "$manifest_dir" --parts "${todo[@]}"
    for part in "${todo[@]}"; do
      touch "$manifest_dir/.aishell_$part.done"
    done
  fi
fi

if [ "$stage" -le 2 ] && [ "$stop_stage" -ge 2 ]; then
  if [ ! -d "$dl_dir/musan" ]; then
    log "Stage 2: no MUSAN at $dl_dir/musan, skipping (training can mix generated noise instead)"
  elif [ -f "$manifest_dir/.musan.done" ]; then
    log "Stage 2: MUSAN manifests done before, skipping"
  else
    log "Stage 2: MUSAN manifests -> $manifest_dir"
    asr data prepare musan --corpus-dir "$dl_dir/musan" --out-dir "$manifest_dir"
    touch "$manifest_dir/.musan.done"
  fi
fi

if [ "$stage" -le 3 ] && [ "$stop_stage" -ge 3 ]; then
  log "Stage 3: fbank of ${parts} -> $fbank_dir"
  mkdir -p "$fbank_dir"
  for part in "${part_list[@]}"; do
    if [ -f "$fbank_dir/.aishell_$part.done" ]; then
      log "Stage 3: fbank of $part done before, skipping"
      continue
    fi
    perturb=()
    if [ "$part" = train ] && [ "$speed_perturb" = true ]; then
      perturb=(--speed-perturb)
    fi
    log "Stage 3: fbank of $part ${perturb[*]}"
    asr data fbank --cuts "$manifest_dir/aishell_cuts_$part.jsonl.gz" \
      --out "$fbank_dir/aishell_cuts_$part.jsonl.gz" \
      --storage-dir "$fbank_dir/aishell_feats_$part" --num-workers "$nj" "${perturb[@]}"
    touch "$fbank_dir/.aishell_$part.done"
  done
  if [ -f "$manifest_dir/musan_cuts.jsonl.gz" ] && [ ! -f "$fbank_dir/.musan.done" ]; then
    log "Stage 3: fbank of MUSAN"
    asr data fbank --cuts "$manifest_dir/musan_cuts.jsonl.gz" --out "$fbank_dir/musan_cuts.jsonl.gz" \
      --storage-dir "$fbank_dir/musan_feats" --num-workers "$nj"
    touch "$fbank_dir/.musan.done"
  fi
fi

if [ "$stage" -le 4 ] && [ "$stop_stage" -ge 4 ]; then
  train_text=$manifest_dir/aishell_text_train.txt
  if [ ! -f "$train_text" ]; then
    echo "$0: stage 4 builds the character table from $train_text; run stage 1 with the train part" >&2
    exit 1
  fi
  if [ -f "$lang_dir/.done" ]; then
    log "Stage 4: $lang_dir done before, skipping"
  else
    log "Stage 4: character table from the train transcripts -> $lang_dir"
    asr data tokenizer chars --text "$train_text" --out-dir "$lang_dir"
    touch "$lang_dir/.done"
  fi
fi

log "Done (stages $stage to $stop_stage)"
