#!/usr/bin/env bash
# LibriSpeech training (icefall's Zipformer transducer + CTC recipe, BPE 500), after prepare.sh.
# The stages are recipes/common/train.sh's (`--help` lists them and the options); this file sets what is
# LibriSpeech's own. Anything after `--` goes to `asr train`, e.g. `train.sh -- --base-lr 0.04`.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)

readonly corpus=librispeech corpus_title=LibriSpeech preset=librispeech lang_kind=bpe
train_parts="train-clean-100 train-clean-360 train-other-500"
valid_parts="dev-clean dev-other"

. "$repo/recipes/common/train.sh"
