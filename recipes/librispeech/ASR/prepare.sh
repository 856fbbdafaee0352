#!/usr/bin/env bash
# LibriSpeech data preparation, in stages (icefall's layout of work):
#   0  download LibriSpeech parts and MUSAN into $dl_dir (needs the internet)
#   1  lhotse manifests of the parts            -> $data_dir/manifests
#   2  MUSAN manifests, when $dl_dir/musan exists -> $data_dir/manifests
#   3  80-dim fbank (speed perturbation on train-* parts, MUSAN too) -> $data_dir/fbank
#   4  BPE lang dir(s) from the training transcripts -> $data_dir/lang_bpe_$vocab_size
# Every stage skips the work it finds done (.done markers), so reruns are cheap.
# Already have the corpus? Point --dl-dir at the directory holding LibriSpeech/ (and musan/).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)

stage=0
stop_stage=100
dl_dir=$repo/data/download
data_dir=$repo/data/librispeech
nj=4
parts="dev-clean dev-other test-clean test-other train-clean-100 train-clean-360 train-other-500"
vocab_sizes="500"
speed_perturb=true

usage="usage: $0 [--stage N] [--stop-stage M] [options]
  --stage, --stop-stage  first and last stage to run ($stage, $stop_stage)
  --dl-dir DIR           holds LibriSpeech/ and musan/ ($dl_dir)
  --data-dir DIR         manifests/, fbank/, lang_bpe_*/ go here ($data_dir)
  --nj N                 parallel jobs ($nj)
  --parts \"P ...\"        LibriSpeech parts ($parts)
  --vocab-sizes \"V ...\"  BPE vocabulary sizes ($vocab_sizes)
  --speed-perturb B      add 0.9/1.1 speed-perturbed copies of train-* parts (true|false, $speed_perturb)"

. "$repo/recipes/parse_options.sh"
if ! [[ $stage =~ ^-?[0-9]+$ && $stop_stage =~ ^-?[0-9]+$ ]]; then
  echo "$0: --stage and --stop-stage take integers, not '$stage' and '$stop_stage'" >&2
  exit 1
fi

log() {
  echo "$(date '+%Y-%m-%d %H:%M:%S') (librispeech/prepare.sh:${BASH_LINENO[0]}) $*"
}

if ! command -v asr >/dev/null; then
  echo "$0: the 'asr' command is not on PATH (activate the virtual environment: . .venv/bin/activate)" >&2
  exit 1
fi

manifest_dir=$data_dir/manifests
fbank_dir=$data_dir/fbank
read -r -a part_list <<<"$parts"
train_parts=()
for part in "${part_list[@]}"; do
  if [[ $part == train-* ]]; then
    train_parts+=("$part")
  fi
done

if [ "$stage" -le 0 ] && [ "$stop_stage" -ge 0 ]; then
  log "Stage 0: download LibriSpeech (${parts}) and MUSAN into $dl_dir"
  # lhotse skips every part whose $dl_dir/LibriSpeech/<part>/.completed exists.
  asr data prepare download librispeech --dl-dir "$dl_dir" --parts "${part_list[@]}"
  if [ -f "$dl_dir/.musan_completed" ]; then
    log "Stage 0: MUSAN already in $dl_dir/musan"
  else
    asr data prepare download musan --dl-dir "$dl_dir"
  fi
fi

if [ "$stage" -le 1 ] && [ "$stop_stage" -ge 1 ]; then
  log "Stage 1: LibriSpeech manifests of ${parts} -> $manifest_dir"
  todo=()
  for part in "${part_list[@]}"; do
    if [ -f "$manifest_dir/.librispeech_$part.done" ]; then
      log "Stage 1: $part done before, skipping"
    else
      todo+=("$part")
    fi
  done
  if [ ${#todo[@]} -gt 0 ]; then
    asr data prepare librispeech --corpus-dir "$dl_dir/LibriSpeech" --out-dir "$manifest_dir" \
      --parts "${todo[@]}" --num-jobs "$nj"
    for part in "${todo[@]}"; do
      touch "$manifest_dir/.librispeech_$part.done"
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
    if [ -f "$fbank_dir/.librispeech_$part.done" ]; then
      log "Stage 3: fbank of $part done before, skipping"
      continue
    fi
    perturb=()
    if [[ $part == train-* ]] && [ "$speed_perturb" = true ]; then
      perturb=(--speed-perturb)
    fi
    log "Stage 3: fbank of $part ${perturb[*]}"
    asr data fbank --cuts "$manifest_dir/librispeech_cuts_$part.jsonl.gz" \
      --out "$fbank_dir/librispeech_cuts_$part.jsonl.gz" \
      --storage-dir "$fbank_dir/librispeech_feats_$part" --num-workers "$nj" "${perturb[@]}"
    touch "$fbank_dir/.librispeech_$part.done"
  done
  if [ -f "$manifest_dir/musan_cuts.jsonl.gz" ] && [ ! -f "$fbank_dir/.musan.done" ]; then
    log "Stage 3: fbank of MUSAN"
    asr data fbank --cuts "$manifest_dir/musan_cuts.jsonl.gz" --out "$fbank_dir/musan_cuts.jsonl.gz" \
      --storage-dir "$fbank_dir/musan_feats" --num-workers "$nj"
    touch "$fbank_dir/.musan.done"
  fi
fi

if [ "$stage" -le 4 ] && [ "$stop_stage" -ge 4 ]; then
  if [ ${#train_parts[@]} -eq 0 ]; then
    echo "$0: stage 4 trains BPE on train-* transcripts, but --parts '$parts' has none" >&2
    exit 1
  fi
  todo=()
  for vocab_size in $vocab_sizes; do
    if [ -f "$data_dir/lang_bpe_$vocab_size/.done" ]; then
      log "Stage 4: $data_dir/lang_bpe_$vocab_size done before, skipping"
    else
      todo+=("$vocab_size")
    fi
  done
  if [ ${#todo[@]} -gt 0 ]; then
    # The transcripts of every training part, one a line, as icefall trains its BPE models on.
    train_text=$manifest_dir/librispeech_text_train.txt
    for part in "${train_parts[@]}"; do
      cat "$manifest_dir/librispeech_text_$part.txt"
    done >"$train_text.tmp"
    mv "$train_text.tmp" "$train_text"
  fi
  for vocab_size in "${todo[@]}"; do
    lang_dir=$data_dir/lang_bpe_$vocab_size
    log "Stage 4: BPE $vocab_size from ${train_parts[*]} -> $lang_dir"
    asr data tokenizer bpe --text "$train_text" --vocab-size "$vocab_size" --out-dir "$lang_dir"
    touch "$lang_dir/.done"
  done
fi

log "Done (stages $stage to $stop_stage)"
