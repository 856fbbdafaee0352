#!/usr/bin/env bash
# The checks and benchmarks that need a CUDA GPU, in one run: GPU time is usually short and shared, so
# everything is prepared on a CPU machine and run here in one go. Each step has its own time limit and
# logs to OUT_DIR/gpu_checks.log; the benchmarks write their JSON to OUT_DIR.
#
#   bash tools/gpu_checks.sh OUT_DIR [DATA_DIR] [STEPS]
#
# STEPS (default: all, in this order):
#   env        GPU, driver, torch and triton versions
#   kernels    every case of tests/helpers/triton_kernel_cases.py and triton_kernel_encoder_cases.py compiled for
#              the GPU, random sweeps included
#   tests      the rest of tests/test_gpu.py (half-precision kernels, losses GPU vs CPU, AMP steps)
#   attention  tools/bench/attention.py: Triton kernel vs PyTorch reference vs SDPA (without the P-step loop
#              variant at P = 90, which ran past the step limit on an H100)
#   losses     tools/bench/losses.py --device cuda: full vs pruned RNN-T loss
#   encoders   tools/bench/encoders.py --device cuda: the four encoder families at ~22M parameters
#   encoders-bf16  zipformer-small vs conformer-small under bf16 autocast, eager and compiled: a realistic
#              training batch (64 x 15 s = 960 s of audio) and batch 4 (4 x 10 s, 4 x 30 s)
#   train      asr train on the GPU with bf16 and fp16 autocast, half a minute each (needs DATA_DIR)
#   ddp        the train step under torchrun with one process: the nccl path of the DDP code
#   decode     asr decode on the GPU, greedy (needs DATA_DIR); beam-lm: beam 8 + LM
#
# DATA_DIR holds data/cuts_{train,test}.jsonl.gz with their features, lang/ (bpe.model, tokens.txt,
# lm_4gram.arpa.gz) and model.pt (a model checkpoint): a small subset of the synth recipe's output,
# since only tens of MB travel to a lent GPU machine. tools/make_gpu_data.py makes it (about 45 MB).
# A GPU image without lhotse needs these wheels carried (pip download for its Python): lhotse lilcom
# kaldialign audioread cytoolz intervaltree soundfile cffi pycparser.
set -u
out=${1:?usage: gpu_checks.sh OUT_DIR [DATA_DIR] [STEPS]}
data=${2:-.gpu}
steps=${3:-env kernels tests attention losses encoders encoders-bf16 train ddp decode}
mkdir -p "$out"
log=$out/gpu_checks.log
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo" || exit 1
export PYTHONPATH=$repo:$repo/kernels${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
python=${PYTHON:-python3}

# step NAME SECONDS COMMAND...: run with a time limit, append its output to the log, print a summary.
step() {
  local name=$1 limit=$2
  shift 2
  local started=$SECONDS
  echo "=== $name: $*" >>"$log"
  timeout --kill-after=10 "$limit" "$@" >>"$log" 2>&1
  local rc=$?
  echo "=== $name: rc=$rc in $((SECONDS - started)) s" | tee -a "$log"
}

for s in $steps; do
  case $s in
    env)
      step env 60 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; \
        $python -c 'import torch, triton; print(\"torch\", torch.__version__, \"triton\", triton.__version__)'"
      ;;
    kernels)
      # Cold, Triton compiles every case first: 44 cases took over 200 s on an H100, 34 s once cached.
      step kernels 420 env ASR_TEST_DEVICE=cuda $python -m pytest -q -p no:cacheprovider --durations=5 \
        tests/helpers/triton_kernel_cases.py tests/helpers/triton_kernel_encoder_cases.py -m "slow or not slow"
      ;;
    tests)
      step tests 120 $python -m pytest -q -p no:cacheprovider -rs tests/test_gpu.py -k "not compiled_on_gpu"
      ;;
    attention)
      step attention 120 $python tools/bench/attention.py --json "$out/attention.json" \
        --lengths 1024 2048 4096 8192 16384 32768 --loop-max-length 0
      ;;
    losses)
      step losses 90 $python tools/bench/losses.py --device cuda --max-gb 40 --repeats 3 \
        --json "$out/losses_cuda.json"
      ;;
    train)
      for amp in bf16 fp16; do
        offset=$(stat -c %s "$log")
        step "train-$amp" 80 $python -m asr train --preset synth-cpu --device cuda --amp "$amp" \
          --train-cuts "$data/data/cuts_train.jsonl.gz" --lang-dir "$data/lang" \
          --exp-dir "/tmp/gpu-train-$amp" --max-duration 200 --num-epochs 50 --max-minutes 0.5 --log-interval 5
        # This run's last progress line only (batches/s and utterances/s).
        tail -c +$((offset + 1)) "$log" | tr '\r' '\n' | grep "utt_s=" | tail -n 1 | tee "$log.train-$amp"
      done
      ;;
    ddp)
      step ddp 80 $python -m torch.distributed.run --standalone --nproc_per_node 1 -m asr train --preset synth-cpu \
        --device cuda --amp bf16 --train-cuts "$data/data/cuts_train.jsonl.gz" --lang-dir "$data/lang" \
        --exp-dir /tmp/gpu-train-ddp --max-duration 200 --num-epochs 50 --max-minutes 0.3 --log-interval 20
      grep -E "nccl|world|rank" "$log" | tail -n 3
      ;;
    decode)
      step decode-greedy 90 $python -m asr decode --device cuda --checkpoint "$data/model.pt" \
        --cuts "$data/data/cuts_test.jsonl.gz" --out-dir /tmp/gpu-decode-greedy
      ;;
    beam-lm)
      step decode-beam-lm 240 $python -m asr decode --device cuda --checkpoint "$data/model.pt" \
        --cuts "$data/data/cuts_test.jsonl.gz" --out-dir /tmp/gpu-decode-beam \
        --method modified_beam_search --beam 8 --lm "$data/lang/lm_4gram.arpa.gz"
      ;;
    encoders)
      step encoders 150 $python tools/bench/encoders.py --device cuda --durations 10,30 --repeats 3 \
        --json "$out/encoders_cuda.json"
      ;;
    encoders-bf16)
      pair=(tools/bench/encoders.py --device cuda --encoders zipformer-small,conformer-small --amp bf16 --repeats 3)
      step encoders-bf16-b64 180 $python "${pair[@]}" --batch 64 --durations 15 --json "$out/encoders_cuda_bf16_b64.json"
      step encoders-bf16-b64-compiled 420 $python "${pair[@]}" --batch 64 --durations 15 --compile \
        --json "$out/encoders_cuda_bf16_b64_compiled.json"
      step encoders-bf16-b4 150 $python "${pair[@]}" --durations 10,30 --json "$out/encoders_cuda_bf16_b4.json"
      step encoders-bf16-b4-compiled 420 $python "${pair[@]}" --durations 10,30 --compile \
        --json "$out/encoders_cuda_bf16_b4_compiled.json"
      ;;
    *)
      echo "unknown step $s" | tee -a "$log"
      ;;
  esac
done

# The lines worth reading first: test summaries, ratios, throughput, WER.
echo "=== digest"
tr '\r' '\n' <"$log" | grep -E "passed|failed|error|Error|over_triton|full/pruned|stopped in|finished:|WER|real-time" \
  | tail -n 80
cat "$log".train-* 2>/dev/null
