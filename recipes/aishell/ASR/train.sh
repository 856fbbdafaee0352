#!/usr/bin/env bash
# AISHELL-1 training (icefall's Zipformer transducer + CTC recipe, characters), after prepare.sh.
# The stages are recipes/common/train.sh's (`--help` lists them and the options); this file sets what is
# AISHELL's own. Anything after `--` goes to `asr train`, e.g. `train.sh -- --base-lr 0.04`.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)

readonly corpus=aishell corpus_title=AISHELL-1 preset=aishell lang_kind=char
train_parts="train"
valid_parts="dev"

. "$repo/recipes/common/train.sh"
