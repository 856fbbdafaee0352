# Helpers shared by every recipe script; source it after setting `repo` (the repository root):
#
#   . "$repo/recipes/common/stages.sh"
#   if stage_selected 3; then log "Stage 3: ..."; fi
#
# Each helper that checks something exits the script with a message on stderr naming what is wrong
# (and, where it can, the command that makes the missing input).

# log MESSAGE...: a time-stamped line on stdout naming the script and line that logged it.
log() {
  local source=${BASH_SOURCE[1]#"$repo/"}
  source=${source#recipes/}
  echo "$(date '+%Y-%m-%d %H:%M:%S') ($source:${BASH_LINENO[0]}) $*"
}

# die MESSAGE...: the message on stderr, prefixed with the script's name, then exit 1.
die() {
  echo "$0: $*" >&2
  exit 1
}

# stage_selected N: true when stage N lies within --stage ... --stop-stage.
stage_selected() {
  [ "$stage" -le "$1" ] && [ "$stop_stage" -ge "$1" ]
}

# need_asr: the `asr` command is on PATH.
need_asr() {
  command -v asr >/dev/null || die "the 'asr' command is not on PATH (activate the virtual environment:" \
    ". .venv/bin/activate)"
}

# need_int NAME...: each named option's value is an integer.
need_int() {
  local name
  for name in "$@"; do
    [[ ${!name} =~ ^-?[0-9]+$ ]] || die "--${name//_/-} takes an integer, not '${!name}'"
  done
}

# need_choice NAME CHOICE...: the named option's value is one of the choices.
need_choice() {
  local name=$1 choice
  shift
  for choice in "$@"; do
    [ "${!name}" = "$choice" ] && return 0
  done
  local IFS=,
  die "--${name//_/-} takes one of {$*}, not '${!name}'"
}

# need_file PATH WHY: PATH is a file, else an error naming it and WHY.
need_file() {
  [ -f "$1" ] || die "missing $1 ($2)"
}

# joined SEP WORD...: the words joined by the one-character separator SEP.
joined() {
  local IFS=$1
  shift
  echo "$*"
}
