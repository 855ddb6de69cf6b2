#!/usr/bin/env bash
# Installs what modelfs needs on Debian (FUSE 3, a C and C++ toolchain and cmake for pyfuse3 and
# llama-cpp-python, docker-registry for the demo and tests, apache2-utils for the htpasswd that
# writes the tests' bcrypt password files, nginx for the read mirror in mirror/ and its tests,
# skopeo to read back what push writes) and creates .venv with modelfs and its test tools.
# Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(fuse3 libfuse3-dev pkg-config gcc g++ cmake python3-dev python3-venv docker-registry apache2-utils curl nginx tmux skopeo)

missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "setup: installing ${missing[*]}" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
    # Debian starts its stock nginx site on port 80 where it may; the tests run their own
    # nginx. Stop the service this run installed, and leave alone one that was already there.
    if [[ " ${missing[*]} " == *" nginx "* ]] && [ -d /run/systemd/system ]; then
        $SUDO systemctl disable --now nginx >/dev/null 2>&1 || true
    fi
fi
# mirror/nginx.conf needs the slice module (Debian builds nginx with it).
if ! "$(command -v nginx || echo /usr/sbin/nginx)" -V 2>&1 | grep -q -- --with-http_slice_module; then
    echo "setup: this nginx lacks the slice module that mirror/nginx.conf needs" >&2
fi

# The systemd tier (tests/systemd) boots systemd 252 in systemd-nspawn, in a Debian tree that
# mmdebstrap builds once. Without recommends (libnss-mymachines would edit the host's
# nsswitch.conf); if they cannot be installed, that tier skips and says why.
missing=()
for p in systemd-container mmdebstrap; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "setup: installing ${missing[*]} (for the systemd tier)" >&2
    { $SUDO apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" >/dev/null; } ||
        echo "setup: could not install ${missing[*]}; the systemd tier will be skipped" >&2
fi

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "setup: modelfs needs Python 3.11 or newer ($PYTHON is $("$PYTHON" --version))" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv" >&2
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
# llama-cpp-python (the tests' inference engine) is built from source into .cache/wheels, once.
# Not with -march=native (llama.cpp's default): on CPUs that report AMX, a native build runs AMX
# tile instructions, which some virtual machines refuse with SIGILL. AVX2/FMA/F16C instead, as
# on any x86-64 server of the last decade; and not from pip's wheel cache, which keys a build by
# its source only and would hand back a native build made earlier.
LLAMA_VERSION=$(sed -n 's/.*"llama-cpp-python==\([0-9.]*\)".*/\1/p' pyproject.toml)
LLAMA_WHEELS=.cache/wheels/llama-cpp-python-$LLAMA_VERSION
if ! ls "$LLAMA_WHEELS"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    echo "setup: building llama-cpp-python $LLAMA_VERSION from source, once (~5-7 min on 2 cores)" >&2
    mkdir -p "$LLAMA_WHEELS"
    LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
    if [ "$(uname -m)" != x86_64 ]; then
        LLAMA_CMAKE_ARGS="-DGGML_NATIVE=ON"
    fi
    CMAKE_ARGS="$LLAMA_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
        .venv/bin/python -m pip wheel -q --no-cache-dir --no-deps -w "$LLAMA_WHEELS" \
        "llama-cpp-python==$LLAMA_VERSION" 2>&1 | grep -v "is ignored: it is neither" >&2 || true
    if ! ls "$LLAMA_WHEELS"/llama_cpp_python-*.whl >/dev/null 2>&1; then
        echo "setup: building llama-cpp-python failed" >&2
        exit 1
    fi
fi
if [ ! -e ".venv/.llama-wheel-$LLAMA_VERSION" ] || ! .venv/bin/python -c 'import llama_cpp' 2>/dev/null; then
    .venv/bin/python -m pip install -q --force-reinstall --no-deps \
        "$LLAMA_WHEELS"/llama_cpp_python-*.whl 2>&1 | grep -v "is ignored: it is neither" >&2 || true
    touch ".venv/.llama-wheel-$LLAMA_VERSION"
fi
echo "setup: installing modelfs into .venv (pyfuse3 builds from source: ~30 s the first time)" >&2
CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) .venv/bin/python -m pip install -q -e '.[test]' 2>&1 |
    grep -v "is ignored: it is neither" >&2 || true
.venv/bin/python -c 'import modelfs, pyfuse3, trio, httpx, llama_cpp' || {
    echo "setup: modelfs did not install into .venv" >&2
    exit 1
}
# `modelfs <TAB>` and `man modelfs`: generated from the CLI's parser, never failing setup.
bash scripts/shell-support.sh .venv/bin/modelfs /
