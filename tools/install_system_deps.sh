#!/usr/bin/env bash
# Debian packages the offline corpus needs: TTS engines, sox, and the sentence sources.
# Installs only what is missing; needs root (or sudo) the first time.
set -euo pipefail

# festvox-*: festival's kal, ked and cmu_us_slt_arctic_hts voices; fortunes-zh: the Mandarin
# sentences of `asr data synth --language cmn` (asr/data/synth.py); wamerican-large: the word list of
# the synth recipe's decoding lexicon (--oov-penalty); ffmpeg: the Opus and G.722 codecs of
# `asr data synth --augment` (asr/data/acoustics.py) and decoding the real-speech set;
# asterisk-core-sounds-en(-g722), pocketsphinx-testdata: real speech, for evaluation only (asr/data/real_speech.py).
packages=(espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts
          sox libsox-fmt-all fortunes fortunes-min wordnet-base fortunes-zh wamerican-large
          ffmpeg asterisk-core-sounds-en asterisk-core-sounds-en-g722 pocketsphinx-testdata)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null; then
    echo "install_system_deps: no apt-get; please install: ${missing[*]}" >&2
    exit 1
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing Debian packages: ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
