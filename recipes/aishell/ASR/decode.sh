#!/usr/bin/env bash
# AISHELL-1 decoding of a model trained by train.sh, scored by character error rate (CER): AISHELL
# transcripts have no spaces between words. The stages are recipes/common/decode.sh's (`--help` lists them
# and the options); this file sets what is AISHELL's own. Anything after `--` goes to `asr decode`.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)

readonly corpus=aishell corpus_title=AISHELL-1 score_unit=char
test_sets="dev test"

. "$repo/recipes/common/decode.sh"
