#!/usr/bin/env bash
# LibriSpeech data preparation: download, manifests, fbank (speed-perturbed train-* parts), BPE lang dirs.
# The stages are recipes/common/prepare.sh's (`--help` lists them and the options); this file sets what
# is LibriSpeech's own. Already have the corpus? Point --dl-dir at the directory holding LibriSpeech/.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)

readonly corpus=librispeech corpus_title=LibriSpeech corpus_subdir=LibriSpeech
readonly train_glob='train-*' lang_kind=bpe manifest_workers=true
parts="dev-clean dev-other test-clean test-other train-clean-100 train-clean-360 train-other-500"

. "$repo/recipes/common/prepare.sh"
