# Decoding shared by the corpus recipes: recipes/<corpus>/ASR/decode.sh sets, read-only,
#   corpus        file prefix of prepare.sh's cuts: DATA_DIR/fbank/<corpus>_cuts_<part>.jsonl.gz
#   corpus_title  the corpus's name in messages
#   score_unit    word (WER) or char (CER: asr decode --chars, for transcripts without spaces between words)
# and the default of --test-sets (`test_sets`), then sources this file, which parses the options and runs
# the stages below.
# shellcheck shell=bash

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  echo "$0: run a corpus recipe (recipes/<corpus>/ASR/decode.sh), which sources this file" >&2
  exit 2
fi

# shellcheck source=recipes/common/stages.sh
. "$repo/recipes/common/stages.sh"

case "$score_unit" in
  word) metric=WER score_flags=() ;;
  char) metric=CER score_flags=(--chars) ;;
  *) die "score_unit is word or char, not '$score_unit'" ;;
esac
summary_name=${metric,,}-summary.txt

stage=0
stop_stage=100
data_dir=$repo/data/$corpus
exp_dir=$repo/exp/$corpus
method=greedy_search
beam_size=4
epoch=30
avg=9
use_averaged_model=true
checkpoint=
chunk_size=0
left_context_frames=

usage="usage: $0 [--stage N] [--stop-stage M] [options] [-- asr-decode-options]
$corpus_title decoding of a model trained by train.sh, scored by $metric, in stages:
  0  the model to decode: epoch-E.pt, averaged over the last A epochs (icefall's --epoch/--avg; with
     --use-averaged-model true, the running average between two epoch checkpoints, made by asr decode
     itself; with false and A > 1, asr average writes EXP_DIR/averaged/epoch-E-avg-A.pt)
  1  asr decode of each --test-sets part -> EXP_DIR/decode-METHOD/SET/{hyps.txt,refs.txt,errs.txt},
     then a table of the $metric per test set (also in EXP_DIR/decode-METHOD/$summary_name)
options:
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

. "$repo/recipes/common/parse_options.sh"
extra_args=("$@")
need_int stage stop_stage epoch avg chunk_size beam_size
need_choice use_averaged_model true false
# icefall's method names, and the names asr decode uses for them
case "$method" in
  greedy_search | greedy) method=greedy_search asr_method=greedy ;;
  modified_beam_search) asr_method=modified_beam_search ;;
  ctc_greedy_search | ctc_greedy) method=ctc_greedy_search asr_method=ctc_greedy ;;
  ctc_prefix_beam_search) asr_method=ctc_prefix_beam_search ;;
  *)
    die "unknown --method '$method' (greedy_search, modified_beam_search, ctc_greedy_search," \
      "ctc_prefix_beam_search)"
    ;;
esac
need_asr

fbank_dir=$data_dir/fbank
read -r -a test_list <<<"$test_sets"
[ ${#test_list[@]} -gt 0 ] || die "--test-sets is empty"

if [ -n "$left_context_frames" ] && [ "$chunk_size" = 0 ]; then
  die "--left-context-frames applies to chunk-by-chunk decoding: give --chunk-size too"
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

# What stage 1 decodes: asr decode's --checkpoint (and --average-from), and how to describe it.
average_from=()
if [ -n "$checkpoint" ]; then
  [ -e "$checkpoint" ] || die "missing $checkpoint (--checkpoint)"
  decode_checkpoint=$checkpoint
  described="checkpoint $checkpoint"
else
  [ -d "$exp_dir" ] || die "missing experiment directory $exp_dir (run train.sh, or pass --exp-dir)"
  if [ "$epoch" -lt 1 ] || [ "$avg" -lt 1 ]; then
    die "--epoch and --avg must be at least 1 (got $epoch and $avg)"
  fi
  decode_checkpoint=$exp_dir/epoch-$epoch.pt
  described="epoch $epoch, avg $avg"
  if [ "$use_averaged_model" = true ]; then
    start=$((epoch - avg))
    if [ "$start" -lt 1 ]; then
      die "--use-averaged-model true averages between epoch-(E-A).pt and epoch-E.pt, so --avg" \
        "must be below --epoch (got --epoch $epoch --avg $avg); or pass --use-averaged-model false"
    fi
    average_from=(--average-from "$exp_dir/epoch-$start.pt")
    described="$described, averaged model"
  elif [ "$avg" -gt 1 ]; then
    decode_checkpoint=$exp_dir/averaged/epoch-$epoch-avg-$avg.pt
  fi
fi

if stage_selected 0 && [ -z "$checkpoint" ]; then
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
    asr average --out "$decode_checkpoint" "${inputs[@]}"
  fi
fi

if stage_selected 1; then
  if [ -z "$checkpoint" ]; then
    need_file "$decode_checkpoint" "run stage 0 first"
  fi
  for part in "${test_list[@]}"; do
    need_file "$fbank_dir/${corpus}_cuts_$part.jsonl.gz" "run prepare.sh stages 1-3 with part $part"
  done
  summary=()
  for part in "${test_list[@]}"; do
    dir=$results_dir/$part
    mkdir -p "$dir"
    log "Stage 1: decode $part with $method${streaming[*]:+ ${streaming[*]}} ($described) -> $dir"
    # stdout is one '<id>\t<hyp>' line per utterance, then the WER (CER) line
    asr decode --checkpoint "$decode_checkpoint" "${average_from[@]}" \
      --cuts "$fbank_dir/${corpus}_cuts_$part.jsonl.gz" --method "$asr_method" --beam "$beam_size" \
      "${score_flags[@]}" "${streaming[@]}" --out-dir "$dir" "${extra_args[@]}" >"$dir/decode.log"
    summary+=("$(printf '%-12s %s' "$part" "$(tail -n 1 "$dir/decode.log")")")
  done
  {
    echo "$metric per test set: $method$suffix, $described"
    printf '%s\n' "${summary[@]}"
  } | tee "$results_dir/$summary_name"
fi

log "Done (stages $stage to $stop_stage)"
