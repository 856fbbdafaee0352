# Training shared by the corpus recipes (icefall's Zipformer transducer + CTC recipe):
# recipes/<corpus>/ASR/train.sh sets, read-only,
#   corpus        file prefix of prepare.sh's cuts: DATA_DIR/fbank/<corpus>_cuts_<part>.jsonl.gz
#   corpus_title  the corpus's name in messages
#   preset        asr train --preset
#   lang_kind     bpe (default lang dir DATA_DIR/lang_bpe_500, holding bpe.model) or char (DATA_DIR/lang_char,
#                 holding tokens.txt)
# and the defaults of --train-parts and --valid-parts (`train_parts`, `valid_parts`), then sources this
# file, which parses the options and runs the stages below.
# shellcheck shell=bash

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  echo "$0: run a corpus recipe (recipes/<corpus>/ASR/train.sh), which sources this file" >&2
  exit 2
fi

# shellcheck source=recipes/common/stages.sh
. "$repo/recipes/common/stages.sh"

case "$lang_kind" in
  bpe) default_lang=lang_bpe_500 lang_file=bpe.model lang_what="BPE lang dir" ;;
  char) default_lang=lang_char lang_file=tokens.txt lang_what="character lang dir" ;;
  *) die "lang_kind is bpe or char, not '$lang_kind'" ;;
esac

stage=0
stop_stage=100
data_dir=$repo/data/$corpus
exp_dir=$repo/exp/$corpus
lang_dir=
encoder=zipformer-medium
causal=false
num_epochs=30
max_duration=1000
world_size=1
musan=auto

usage="usage: $0 [--stage N] [--stop-stage M] [options] [-- asr-train-options]
$corpus_title training after prepare.sh, in stages:
  0  the training and validation CutSets (asr train takes one of each): the fbank cuts of --train-parts
     concatenated and shuffled (the sampler only shuffles within a window of cuts, and the parts are
     stored in speaker order), those of --valid-parts concatenated
  1  asr train --preset $preset (torchrun for --world-size > 1) -> EXP_DIR
Training resumes from the newest checkpoint in EXP_DIR, so rerunning after a stop continues it.
options:
  --stage, --stop-stage  first and last stage to run ($stage, $stop_stage)
  --data-dir DIR         prepare.sh's output: fbank/, $default_lang/ ($data_dir)
  --exp-dir DIR          checkpoints and tensorboard logs ($exp_dir)
  --lang-dir DIR         $lang_what (default: DATA_DIR/$default_lang)
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

. "$repo/recipes/common/parse_options.sh"
extra_args=("$@")
need_int stage stop_stage
[[ $world_size =~ ^[1-9][0-9]*$ ]] || die "--world-size takes a positive integer, not '$world_size'"
need_choice causal true false
need_choice musan auto true false
need_asr

fbank_dir=$data_dir/fbank
lang_dir=${lang_dir:-$data_dir/$default_lang}
musan_cuts=$fbank_dir/musan_cuts.jsonl.gz
read -r -a train_list <<<"$train_parts"
read -r -a valid_list <<<"$valid_parts"
[ ${#train_list[@]} -gt 0 ] || die "--train-parts is empty"

part_cuts() {  # part_cuts PART: the fbank CutSet prepare.sh wrote for a part
  echo "$fbank_dir/${corpus}_cuts_$1.jsonl.gz"
}

# The CutSets to train and validate on: parts joined by '+'; a single validation part is used as it is.
train_cuts=$fbank_dir/${corpus}_cuts_$(joined + "${train_list[@]}")-shuf.jsonl.gz
valid_cuts=
if [ ${#valid_list[@]} -gt 0 ]; then
  valid_cuts=$fbank_dir/${corpus}_cuts_$(joined + "${valid_list[@]}").jsonl.gz
fi

# fixed_random_bytes: an endless, always identical stream of random-looking bytes.
fixed_random_bytes() {
  openssl enc -aes-256-ctr -K "$(printf '0%.0s' {1..64})" -iv "$(printf '0%.0s' {1..32})" </dev/zero 2>/dev/null
}

# combine_parts OUT SHUFFLE PART...: the parts' fbank cuts, one JSON line each, concatenated (and with
# SHUFFLE=true shuffled in a fixed order) into OUT; skipped when OUT is newer than every input.
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
    # shuf draws its randomness from a fixed stream (zeros encrypted with AES-CTR under an all-zero key,
    # GNU's recipe for repeatable shuffles), so every run makes the same order.
    gunzip -c "${inputs[@]}" | shuf --random-source=<(fixed_random_bytes) | gzip -c >"$out.tmp"
  else
    log "Stage 0: $* -> $out"
    gunzip -c "${inputs[@]}" | gzip -c >"$out.tmp"
  fi
  mv "$out.tmp" "$out"
}

# Every input of the stages to run is checked before any of them starts.
if stage_selected 0; then
  for part in "${train_list[@]}" "${valid_list[@]}"; do
    [ -f "$(part_cuts "$part")" ] || die "missing $(part_cuts "$part"): run prepare.sh (stages 1-3) with part $part first"
  done
  for tool in shuf openssl; do
    command -v "$tool" >/dev/null || die "stage 0 shuffles the training cuts with shuf and openssl: $tool is not on PATH"
  done
fi
if stage_selected 1; then
  if [ "$stage" -ge 1 ]; then  # else stage 0 makes them
    for needed in "$train_cuts" ${valid_cuts:+"$valid_cuts"}; do
      [ -f "$needed" ] || die "missing $needed: run stage 0 first"
    done
  fi
  [ -d "$lang_dir" ] || die "missing lang dir $lang_dir: run prepare.sh stage 4 or pass --lang-dir"
  [ -f "$lang_dir/$lang_file" ] \
    || die "lang dir $lang_dir has no $lang_file: run prepare.sh stage 4 or pass --lang-dir"
  if [ "$musan" = true ] && [ ! -f "$musan_cuts" ]; then
    die "--musan true but $musan_cuts is missing: run prepare.sh stages 2-3 with MUSAN in --dl-dir"
  fi
fi

if stage_selected 0; then
  combine_parts "$train_cuts" true "${train_list[@]}"
  if [ ${#valid_list[@]} -gt 1 ]; then
    combine_parts "$valid_cuts" false "${valid_list[@]}"
  fi
fi

if stage_selected 1; then
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
    command -v torchrun >/dev/null || die "--world-size $world_size needs torchrun on PATH"
    launcher=(torchrun --standalone --nproc_per_node "$world_size" -m asr train)
  fi
  log "Stage 1: train $encoder (causal=$causal) on ${train_list[*]}, $world_size process(es) -> $exp_dir"
  "${launcher[@]}" --preset "$preset" --encoder "$encoder" "$causal_flag" \
    --train-cuts "$train_cuts" ${valid_cuts:+--valid-cuts "$valid_cuts"} --lang-dir "$lang_dir" \
    --exp-dir "$exp_dir" --num-epochs "$num_epochs" --max-duration "$max_duration" \
    "${noise[@]}" "${extra_args[@]}"
fi

log "Done (stages $stage to $stop_stage)"
