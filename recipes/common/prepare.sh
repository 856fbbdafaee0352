# Data preparation shared by the corpus recipes: recipes/<corpus>/ASR/prepare.sh sets, read-only,
#   corpus            lhotse recipe and file prefix: manifests/<corpus>_cuts_<part>.jsonl.gz (librispeech, aishell)
#   corpus_title      the corpus's name in messages
#   corpus_subdir     where the corpus lies under --dl-dir (LibriSpeech, aishell)
#   train_glob        the parts whose transcripts make the lang dir and that are speed-perturbed ('train-*')
#   lang_kind         bpe: one DATA_DIR/lang_bpe_<V> per --vocab-sizes V; char: DATA_DIR/lang_char
#   manifest_workers  true when `asr data prepare <corpus>` takes --num-workers
# and the default of --parts (`parts`), then sources this file, which parses the options and runs the
# stages below.
# shellcheck shell=bash

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  echo "$0: run a corpus recipe (recipes/<corpus>/ASR/prepare.sh), which sources this file" >&2
  exit 2
fi

# shellcheck source=recipes/common/stages.sh
. "$repo/recipes/common/stages.sh"

stage=0
stop_stage=100
dl_dir=$repo/data/download
data_dir=$repo/data/$corpus
nj=4
speed_perturb=true
lang_usage="  4  character table from the training transcripts -> DATA_DIR/lang_char"
vocab_usage=
if [ "$lang_kind" = bpe ]; then
  vocab_sizes="500"
  lang_usage="  4  BPE lang dir(s) from the training transcripts -> DATA_DIR/lang_bpe_V for each --vocab-sizes V"
  vocab_usage="
  --vocab-sizes \"V ...\"  BPE vocabulary sizes ($vocab_sizes)"
fi

usage="usage: $0 [--stage N] [--stop-stage M] [options]
$corpus_title data preparation, in stages (icefall's layout of work):
  0  download $corpus_title and MUSAN into DL_DIR (needs the internet)
  1  lhotse manifests of the parts -> DATA_DIR/manifests
  2  MUSAN manifests, when DL_DIR/musan exists -> DATA_DIR/manifests
  3  80-dim fbank (parts matching '$train_glob' also speed-perturbed 0.9/1.1, MUSAN too) -> DATA_DIR/fbank
$lang_usage
Every stage skips the work it finds done (.done markers), so reruns are cheap. Already have the corpus?
Point --dl-dir at the directory holding $corpus_subdir/ (and musan/) and start at --stage 1.
options:
  --stage, --stop-stage  first and last stage to run ($stage, $stop_stage)
  --dl-dir DIR           holds $corpus_subdir/ and musan/ ($dl_dir)
  --data-dir DIR         manifests/, fbank/ and the lang dir go here ($data_dir)
  --nj N                 parallel jobs ($nj)
  --parts \"P ...\"        $corpus_title parts ($parts)$vocab_usage
  --speed-perturb B      add 0.9/1.1 speed-perturbed copies of the training parts (true|false, $speed_perturb)"

. "$repo/recipes/common/parse_options.sh"
need_int stage stop_stage nj
need_choice speed_perturb true false
need_asr

manifest_dir=$data_dir/manifests
fbank_dir=$data_dir/fbank
read -r -a part_list <<<"$parts"
[ ${#part_list[@]} -gt 0 ] || die "--parts is empty"
train_parts=()
for part in "${part_list[@]}"; do
  # shellcheck disable=SC2053  # train_glob is a pattern
  if [[ $part == $train_glob ]]; then
    train_parts+=("$part")
  fi
done

if stage_selected 0; then
  log "Stage 0: download $corpus_title (${parts}) and MUSAN into $dl_dir"
  # lhotse skips every archive whose .completed marker exists under $dl_dir.
  asr data prepare download "$corpus" --dl-dir "$dl_dir" --parts "${part_list[@]}"
  if [ -f "$dl_dir/.musan_completed" ]; then
    log "Stage 0: MUSAN already in $dl_dir/musan"
  else
    asr data prepare download musan --dl-dir "$dl_dir"
  fi
fi

if stage_selected 1; then
  log "Stage 1: $corpus_title manifests of ${parts} -> $manifest_dir"
  todo=()
  for part in "${part_list[@]}"; do
    if [ -f "$manifest_dir/.${corpus}_$part.done" ]; then
      log "Stage 1: $part done before, skipping"
    else
      todo+=("$part")
    fi
  done
  if [ ${#todo[@]} -gt 0 ]; then
    workers=()
    if [ "$manifest_workers" = true ]; then
      workers=(--num-workers "$nj")
    fi
    asr data prepare "$corpus" --corpus-dir "$dl_dir/$corpus_subdir" --out-dir "$manifest_dir" \
      --parts "${todo[@]}" "${workers[@]}"
    for part in "${todo[@]}"; do
      touch "$manifest_dir/.${corpus}_$part.done"
    done
  fi
fi

if stage_selected 2; then
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

if stage_selected 3; then
  log "Stage 3: fbank of ${parts} -> $fbank_dir"
  mkdir -p "$fbank_dir"
  for part in "${part_list[@]}"; do
    if [ -f "$fbank_dir/.${corpus}_$part.done" ]; then
      log "Stage 3: fbank of $part done before, skipping"
      continue
    fi
    perturb=()
    # shellcheck disable=SC2053
    if [[ $part == $train_glob ]] && [ "$speed_perturb" = true ]; then
      perturb=(--speed-perturb)
    fi
    log "Stage 3: fbank of $part ${perturb[*]}"
    asr data fbank --cuts "$manifest_dir/${corpus}_cuts_$part.jsonl.gz" \
      --out "$fbank_dir/${corpus}_cuts_$part.jsonl.gz" \
      --storage-dir "$fbank_dir/${corpus}_feats_$part" --num-workers "$nj" "${perturb[@]}"
    touch "$fbank_dir/.${corpus}_$part.done"
  done
  if [ -f "$manifest_dir/musan_cuts.jsonl.gz" ] && [ ! -f "$fbank_dir/.musan.done" ]; then
    log "Stage 3: fbank of MUSAN"
    asr data fbank --cuts "$manifest_dir/musan_cuts.jsonl.gz" --out "$fbank_dir/musan_cuts.jsonl.gz" \
      --storage-dir "$fbank_dir/musan_feats" --num-workers "$nj"
    touch "$fbank_dir/.musan.done"
  fi
fi

if stage_selected 4; then
  if [ ${#train_parts[@]} -eq 0 ]; then
    die "stage 4 builds the lang dir from the transcripts of the parts matching '$train_glob'," \
      "but --parts '$parts' has none"
  fi
  lang_dirs=()
  if [ "$lang_kind" = bpe ]; then
    for vocab_size in $vocab_sizes; do
      lang_dirs+=("$data_dir/lang_bpe_$vocab_size")
    done
  else
    lang_dirs=("$data_dir/lang_char")
  fi
  todo=()
  for lang_dir in "${lang_dirs[@]}"; do
    if [ -f "$lang_dir/.done" ]; then
      log "Stage 4: $lang_dir done before, skipping"
    else
      todo+=("$lang_dir")
    fi
  done
  if [ ${#todo[@]} -gt 0 ]; then
    for part in "${train_parts[@]}"; do
      need_file "$manifest_dir/${corpus}_text_$part.txt" "stage 4 reads it: run stage 1 with part $part"
    done
    # One training part's transcripts are used as they are; several are joined, one sentence a line,
    # as icefall trains its BPE models on all of them.
    train_text=$manifest_dir/${corpus}_text_${train_parts[0]}.txt
    if [ ${#train_parts[@]} -gt 1 ]; then
      train_text=$manifest_dir/${corpus}_text_train.txt
      for part in "${train_parts[@]}"; do
        cat "$manifest_dir/${corpus}_text_$part.txt"
      done >"$train_text.tmp"
      mv "$train_text.tmp" "$train_text"
    fi
  fi
  for lang_dir in "${todo[@]}"; do
    if [ "$lang_kind" = bpe ]; then
      vocab_size=${lang_dir##*_}
      log "Stage 4: BPE $vocab_size from ${train_parts[*]} -> $lang_dir"
      asr data tokenizer bpe --text "$train_text" --vocab-size "$vocab_size" --out-dir "$lang_dir"
    else
      log "Stage 4: character table from ${train_parts[*]} -> $lang_dir"
      asr data tokenizer chars --text "$train_text" --out-dir "$lang_dir"
    fi
    touch "$lang_dir/.done"
  done
fi

log "Done (stages $stage to $stop_stage)"
