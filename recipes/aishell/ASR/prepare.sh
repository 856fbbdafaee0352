#!/usr/bin/env bash
# AISHELL-1 data preparation: download, manifests, fbank (speed-perturbed train), character lang dir.
# The stages are recipes/common/prepare.sh's (`--help` lists them and the options); this file sets what
# is AISHELL's own. Already have the corpus? Point --dl-dir at the directory holding aishell/data_aishell.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)

readonly corpus=aishell corpus_title=AISHELL-1 corpus_subdir=aishell
readonly train_glob=train lang_kind=char manifest_workers=false
# lhotse's AISHELL recipe reads all three parts whichever are asked for; these are the ones written.
parts="train dev test"

. "$repo/recipes/common/prepare.sh"
