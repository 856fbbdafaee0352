#!/usr/bin/env bash
# LibriSpeech decoding of a model trained by train.sh, scored by WER.
# The stages are recipes/common/decode.sh's (`--help` lists them and the options); this file sets what is
# LibriSpeech's own. Anything after `--` goes to `asr decode`, e.g. `decode.sh -- --max-frames 20000`.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)

readonly corpus=librispeech corpus_title=LibriSpeech score_unit=word
test_sets="test-clean test-other"

. "$repo/recipes/common/decode.sh"
