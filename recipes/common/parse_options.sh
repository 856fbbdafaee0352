# Option parsing for the recipe scripts; source it after setting the defaults:
#
#   stage=0
#   dl_dir=data/download
#   . recipes/common/parse_options.sh     # now `--stage 3 --dl-dir /x` or `--dl-dir=/x` override them
#
# `--some-name VALUE` assigns VALUE to the variable `some_name`, which the script must already define,
# so a misspelt option is an error rather than silently ignored. A read-only variable (a corpus recipe's
# fixed settings, such as its corpus name) is not an option. `--help` prints the script's `usage`.
# Parsing stops at the first argument that does not
# start with `--` (or after `--`); the rest stay in "$@" for the script.

while [ $# -gt 0 ]; do
  case "$1" in
    --)
      shift
      break
      ;;
    -h | --help)
      echo "${usage:-usage: $0 [--option value ...]}"
      exit 0
      ;;
    --*=*)
      _opt=${1%%=*}
      _value=${1#*=}
      shift
      ;;
    --*)
      if [ $# -lt 2 ]; then
        echo "$0: option $1 needs a value" >&2
        exit 1
      fi
      _opt=$1
      _value=$2
      shift 2
      ;;
    *)
      break
      ;;
  esac
  _name=${_opt#--}
  _name=${_name//-/_}
  if ! [[ $_name =~ ^[a-z_][a-z0-9_]*$ ]] || ! declare -p "$_name" >/dev/null 2>&1 \
      || [[ $(declare -p "$_name") =~ ^declare\ -[a-zA-Z-]*r ]]; then
    echo "$0: unknown option $_opt (run $0 --help for the options)" >&2
    exit 1
  fi
  printf -v "$_name" '%s' "$_value"
done
unset _opt _value _name
