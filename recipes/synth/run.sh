#!/usr/bin/env bash
# The offline recipe: runs anywhere, downloads nothing. Stages (icefall-style):
#   0  build the TTS corpus (espeak-ng, flite, festival, piper)   -> $data_dir
#   1  80-dim fbank of train/dev/test (train optionally speed-perturbed) -> $data_dir/fbank
#   2  BPE lang dir from the training transcripts, and a token n-gram LM on the corpus's sentence
#      pool minus every dev/test sentence                           -> $data_dir/lang_bpe_$vocab_size
#   3  train a transducer + CTC model for $train_minutes minutes  -> $exp_dir
#   4  decode dev and test (test holds voices train never heard), print the WER; then real human speech
#      (the Asterisk prompts, evaluation only) where its Debian packages are installed
# Every stage skips work it finds done, so a rerun continues where the last one stopped; training
# resumes from its newest checkpoint.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

stage=0
stop_stage=100
num_utts=10000
seed=1
data_dir=$repo/data/synth
exp_dir=$repo/exp/synth
encoder=zipformer-xs
causal=false
vocab_size=256
train_minutes=24
num_epochs=30
max_duration=30
lr_epochs=preset
speed_perturb=off
nj=2
method=modified_beam_search
beam=32
lm_order=4
lm_min_count=2
lm_scale=0.5
lm_bonus=1.5
oov_penalty=0
word_list=/usr/share/dict/american-english-large
chunk_size=0
average_batches=500
real_speech=1
augment=none
vary_voices=false

usage="usage: $0 [--stage N] [--stop-stage M] [options]
  --stage, --stop-stage  first and last stage to run ($stage, $stop_stage)
  --num-utts N           corpus size over all splits ($num_utts; 10000 is about 8 h of audio)
  --seed S               corpus seed ($seed)
  --augment KINDS        acoustic augmentation of train: none, all, or kinds of asr data synth --augment
                         (pitch,reverb,noise,band,clip,codec,level) ($augment)
  --vary-voices B        vary each training voice's pitch, pauses and delivery (true|false, $vary_voices)
  --data-dir DIR         corpus, features and lang dir ($data_dir)
  --exp-dir DIR          checkpoints, tensorboard, decode results ($exp_dir)
  --encoder NAME         encoder preset ($encoder; see asr train --help)
  --causal B             streaming (chunk-causal) encoder (true|false, $causal)
  --vocab-size V         BPE vocabulary size ($vocab_size)
  --train-minutes M      wall-clock training budget; 0 for no limit ($train_minutes)
  --num-epochs E         at most this many epochs ($num_epochs)
  --max-duration S       seconds of audio per batch ($max_duration)
  --lr-epochs E          Eden's epoch constant (default: the preset's, 2); scale it with 10000/--num-utts on a larger
                         corpus, so the learning rate decays with the audio seen as it does in the demo
  --speed-perturb MODE   speed perturbation of train: off | one-of (each utterance at one of 0.9x/1x/1.1x,
                         the same hours) | copies (plus 0.9x and 1.1x copies, 3x the hours) ($speed_perturb)
  --nj N                 parallel jobs for corpus and features ($nj)
  --method M             greedy | modified_beam_search | ctc_greedy | ctc_prefix_beam_search ($method)
  --beam K               beam of modified_beam_search / ctc_prefix_beam_search ($beam)
  --lm-order N           order of the token n-gram LM; 0 for none ($lm_order)
  --lm-min-count N       n-grams of order 3 and up seen fewer times are dropped; 1 keeps all ($lm_min_count)
  --lm-scale S           LM weight in modified_beam_search; 0 decodes without the LM ($lm_scale)
  --lm-bonus B           per-token score bonus that offsets the LM's cost of every token ($lm_bonus)
  --oov-penalty P        modified_beam_search: score penalty per hypothesis word outside the lexicon (the
                         words of the train transcripts, the LM text and --word-list); 0 = off ($oov_penalty)
  --word-list FILE       an English word list added to the lexicon where it exists ($word_list,
                         Debian's wamerican-large)
  --chunk-size C         decode chunk by chunk with this chunk (causal models; 0 = full context, $chunk_size)
  --average-batches N    decode the model averaged over about the last N training batches (0: the last
                         model; $average_batches)
  --real-speech B        1: also decode real human speech (Asterisk prompts, evaluation only) when its
                         Debian packages are installed; 0: skip ($real_speech)"

. "$repo/recipes/common/stages.sh"
. "$repo/recipes/common/parse_options.sh"
need_int stage stop_stage
case "$vary_voices" in true | false) ;; *) echo "$0: --vary-voices must be true or false, got '$vary_voices'" >&2; exit 2 ;; esac
need_asr

fbank_dir=$data_dir/fbank
lang_dir=$data_dir/lang_bpe_$vocab_size
lm=$lang_dir/lm_${lm_order}gram.arpa.gz
lm_min_counts=()
if [ "$lm_order" != 0 ]; then
  for ((n = 1; n <= lm_order; n++)); do
    if [ "$n" -le 2 ]; then lm_min_counts+=(1); else lm_min_counts+=("$lm_min_count"); fi
  done
  [ "$lm_min_count" = 2 ] || lm=$lang_dir/lm_${lm_order}gram_min${lm_min_count}.arpa.gz
fi

if stage_selected 0; then
  log "Stage 0: TTS corpus of $num_utts utterances -> $data_dir"
  corpus_options=()
  [ "$augment" = none ] || corpus_options+=(--augment "$augment")
  [ "$vary_voices" = false ] || corpus_options+=(--vary-voices)
  asr data synth --out-dir "$data_dir" --num-utts "$num_utts" --seed "$seed" --num-workers "$nj" "${corpus_options[@]}"
fi

if stage_selected 1; then
  mkdir -p "$fbank_dir"
  for split in train dev test; do
    perturb=off
    if [ "$split" = train ]; then
      perturb=$speed_perturb
    fi
    # The marker holds the perturbation it was made with (an empty one, from before the option, means
    # off), so changing --speed-perturb recomputes train.
    marker=$fbank_dir/.$split.done
    if [ -f "$marker" ] && [ "$marker" -nt "$data_dir/synth_cuts_$split.jsonl.gz" ] \
        && { [ "$(cat "$marker")" = "$perturb" ] || { [ "$perturb" = off ] && [ ! -s "$marker" ]; }; }; then
      log "Stage 1: fbank of $split done before, skipping"
      continue
    fi
    log "Stage 1: fbank of $split (speed perturbation: $perturb)"
    rm -rf "$fbank_dir/feats_$split"
    asr data fbank --cuts "$data_dir/synth_cuts_$split.jsonl.gz" --out "$fbank_dir/synth_cuts_$split.jsonl.gz" \
      --storage-dir "$fbank_dir/feats_$split" --num-workers "$nj" --speed-perturb "$perturb" --seed "$seed"
    echo "$perturb" > "$marker"
  done
fi

if stage_selected 2; then
  if [ -f "$lang_dir/bpe.model" ] && [ "$lang_dir/bpe.model" -nt "$data_dir/synth_cuts_train.jsonl.gz" ]; then
    log "Stage 2: $lang_dir done before, skipping"
  else
    log "Stage 2: BPE $vocab_size -> $lang_dir"
    asr data tokenizer bpe --cuts "$data_dir/synth_cuts_train.jsonl.gz" --vocab-size "$vocab_size" \
      --out-dir "$lang_dir"
  fi
  if [ "$lm_order" != 0 ]; then
    if [ -f "$lm" ] && [ "$lm" -nt "$lang_dir/bpe.model" ]; then
      log "Stage 2: $lm done before, skipping"
    else
      # LM text: the sentence pool the corpus was drawn from, minus every sentence spoken in dev or
      # test, so the LM has never seen an evaluation transcript.
      log "Stage 2: token $lm_order-gram LM -> $lm"
      asr lm text --out "$data_dir/lm_text.txt.gz" \
        --exclude-cuts "$data_dir/synth_cuts_dev.jsonl.gz" "$data_dir/synth_cuts_test.jsonl.gz"
      asr lm train --lang-dir "$lang_dir" --text "$data_dir/lm_text.txt.gz" --order "$lm_order" \
        --min-counts "${lm_min_counts[@]}" --out "$lm"
    fi
  fi
fi

if stage_selected 3; then
  log "Stage 3: train $encoder (causal=$causal) for up to $train_minutes minutes -> $exp_dir"
  limit=()
  if [ "$train_minutes" != 0 ]; then
    limit=(--max-minutes "$train_minutes")
  fi
  schedule=()
  if [ "$lr_epochs" != preset ]; then
    schedule=(--lr-epochs "$lr_epochs")
  fi
  causal_flag=--no-causal
  if [ "$causal" = true ]; then
    causal_flag=--causal
  fi
  asr train --preset synth-cpu --encoder "$encoder" "$causal_flag" \
    --train-cuts "$fbank_dir/synth_cuts_train.jsonl.gz" --valid-cuts "$fbank_dir/synth_cuts_dev.jsonl.gz" \
    --lang-dir "$lang_dir" --exp-dir "$exp_dir" --num-epochs "$num_epochs" --max-duration "$max_duration" \
    "${limit[@]}" "${schedule[@]}"
fi

if stage_selected 4; then
  streaming=()
  suffix=$method
  fusion=()
  if [ "$method" = modified_beam_search ] && [ "$lm_order" != 0 ] && [ "$lm_scale" != 0 ]; then
    fusion=(--lm "$lm" --lm-scale "$lm_scale" --lm-bonus "$lm_bonus")
    suffix=$method-lm
  fi
  if [ "$chunk_size" != 0 ]; then
    streaming=(--chunk-size "$chunk_size")
    suffix=$suffix-chunk-$chunk_size
  fi
  lexicon=()
  if [ "$oov_penalty" != 0 ]; then
    if [ "$method" != modified_beam_search ]; then
      die "--oov-penalty needs --method modified_beam_search (got $method)"
    fi
    lexicon=(--oov-penalty "$oov_penalty")
    for words in "$lang_dir/transcript_words.txt" "$data_dir/lm_text.txt.gz" "$word_list"; do
      [ -n "$words" ] && [ -f "$words" ] && lexicon+=(--lexicon "$words")
    done
    suffix=$suffix-lex-$oov_penalty
  fi
  averaging=()
  if [ "$average_batches" != 0 ]; then
    averaging=(--average-batches "$average_batches")
    suffix=$suffix-avg-$average_batches
  fi
  for split in dev test; do
    log "Stage 4: decode $split with $method ${fusion[*]} ${lexicon[*]} ${streaming[*]} ${averaging[*]}"
    wer=$(asr decode --checkpoint "$exp_dir" --cuts "$fbank_dir/synth_cuts_$split.jsonl.gz" --method "$method" \
      --beam "$beam" "${fusion[@]}" "${lexicon[@]}" "${streaming[@]}" "${averaging[@]}" \
      --out-dir "$exp_dir/decode-$suffix/$split" | tail -n 1)
    log "Stage 4: $split: $wer"
  done
  # Real human speech (evaluation only), when the Debian packages that hold it are installed.
  if [ "$real_speech" = 1 ] && asr data real-speech --out-dir "$data_dir/real_speech"; then
    wer=$(asr decode --checkpoint "$exp_dir" --cuts "$data_dir/real_speech/asterisk_cuts.jsonl.gz" \
      --method "$method" --beam "$beam" "${fusion[@]}" "${lexicon[@]}" "${streaming[@]}" "${averaging[@]}" \
      --out-dir "$exp_dir/decode-$suffix/real_speech" | tail -n 1)
    log "Stage 4: real speech (Asterisk prompts): $wer"
  fi
fi
