#!/usr/bin/env bash
# Ensure the third-party runtimes that tests and benchmarks compare against, each in its own
# place so .venv keeps onnxruntime-training-cpu alone:
#   ./scripts/peers.sh llama ort genai chromium node
#   llama     .venvs/llama: llama-cpp-python (compiles llama.cpp once per machine, ~12 min on 2 cores)
#   llama-src .venvs/llama-src: llama.cpp's own converters (convert_hf_to_gguf.py, convert_lora_to_gguf.py,
#             conversion/, gguf-py/) from the same llama-cpp-python sdist; run with .venv's python (torch)
#   ort       .venvs/ort: the latest onnxruntime inference package (multi-LoRA adapters, merged models)
#   genai     .venvs/genai: onnxruntime-genai with the latest onnxruntime
#   chromium  Debian's /usr/bin/chromium (playwright, without its browser download, is in .venv's dev extra)
#   node      checks that Node.js >= 20 and npm are there
# A venv is stamped with what it was made from and remade only when that changes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3

LLAMA_PKG="llama-cpp-python==0.3.36"
LLAMA_REQS="$LLAMA_PKG gguf==0.19.* numpy"
ORT_REQS="onnxruntime==1.31.* numpy"
GENAI_REQS="onnxruntime-genai==0.18.* onnxruntime==1.31.* numpy"
WHEELS=${XDG_CACHE_HOME:-$HOME/.cache}/edgetune/wheels  # outside the clone: CI clones afresh

venv_is_current() {  # NAME STAMP
    [ -x ".venvs/$1/bin/python" ] && [ -f ".venvs/$1/.peer-installed" ] \
        && [ "$(cat ".venvs/$1/.peer-installed")" = "$2" ]
}

make_venv() {  # NAME STAMP PIP_ARGS...: (re)create .venvs/NAME with `pip install PIP_ARGS`
    local dir=.venvs/$1 stamp=$2
    shift 2
    echo "peers: making $dir" >&2
    rm -rf "$dir"
    "$PY" -m venv "$dir"
    nice -n 10 "$dir/bin/python" -m pip install -q "$@"
    echo "$stamp" >"$dir/.peer-installed"
}

ensure_venv() {  # NAME REQUIREMENTS
    # shellcheck disable=SC2086  # REQUIREMENTS is a space-separated list of specifiers
    venv_is_current "$1" "$2" || make_venv "$1" "$2" $2
}

# llama.cpp's CPU flags, chosen here rather than -march=native so that one cached wheel suits
# every host of this machine kind. AMX stays off: its kernels die with SIGILL on worker threads
# (llama.cpp PR 26954). The multimodal library (LLAVA_BUILD) is not needed.
llama_cmake_args() {
    local args="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF"
    args="$args -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
    local flag
    for flag in avx512f avx512cd avx512vl avx512dq avx512bw avx512vbmi avx512_vnni avx512_bf16; do
        grep -qw "$flag" /proc/cpuinfo || { echo "$args"; return; }
    done
    echo "$args -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON"
}

ensure_llama() {
    local cmake_args wheels tmp
    cmake_args=$(llama_cmake_args)
    venv_is_current llama "$LLAMA_REQS $cmake_args" && return
    wheels=$WHEELS/llama-$(printf '%s %s' "$LLAMA_PKG" "$cmake_args" | sha256sum | cut -c1-12)
    if ! ls "$wheels"/llama_cpp_python-*.whl >/dev/null 2>&1; then
        echo "peers: compiling $LLAMA_PKG (llama.cpp) into $wheels, about 12 minutes on 2 cores" >&2
        mkdir -p "$WHEELS"
        tmp=$(mktemp -d "$WHEELS/.build.XXXXXX")
        CMAKE_ARGS=$cmake_args nice -n 10 "$PY" -m pip wheel -q --no-deps --no-cache-dir -w "$tmp" "$LLAMA_PKG"
        mv -T "$tmp" "$wheels" 2>/dev/null || rm -rf "$tmp"  # another clone may have finished first
    fi
    # shellcheck disable=SC2086
    make_venv llama "$LLAMA_REQS $cmake_args" --find-links "$wheels" --only-binary llama-cpp-python $LLAMA_REQS
}

ensure_llama_src() {
    local stamp=$LLAMA_PKG dir=.venvs/llama-src sdist tmp
    [ -f "$dir/.peer-installed" ] && [ "$(cat "$dir/.peer-installed")" = "$stamp" ] && return
    sdist=$WHEELS/sdist-${LLAMA_PKG/==/-}
    if ! ls "$sdist"/llama_cpp_python-*.tar.gz >/dev/null 2>&1; then
        echo "peers: downloading the $LLAMA_PKG sdist (llama.cpp's converters) into $sdist" >&2
        mkdir -p "$WHEELS"
        tmp=$(mktemp -d "$WHEELS/.sdist.XXXXXX")
        "$PY" -m pip download -q --no-deps --no-binary :all: -d "$tmp" "$LLAMA_PKG"
        mv -T "$tmp" "$sdist" 2>/dev/null || rm -rf "$tmp"
    fi
    echo "peers: making $dir" >&2
    rm -rf "$dir"
    mkdir -p "$dir"
    tar xzf "$sdist"/llama_cpp_python-*.tar.gz -C "$dir" --strip-components=3 --wildcards \
        '*/vendor/llama.cpp/convert_hf_to_gguf.py' '*/vendor/llama.cpp/convert_lora_to_gguf.py' \
        '*/vendor/llama.cpp/conversion/*' '*/vendor/llama.cpp/gguf-py/*' '*/vendor/llama.cpp/LICENSE'
    echo "$stamp" >"$dir/.peer-installed"
}

ensure_chromium() {
    if [ ! -x /usr/bin/chromium ]; then
        echo "peers: installing Debian's chromium" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    fi
    /usr/bin/chromium --version >/dev/null 2>&1
}

ensure_node() {
    local major
    major=$(node --version 2>/dev/null | sed -E 's/^v([0-9]+).*/\1/') || true
    if [ -z "$major" ] || [ "$major" -lt 20 ]; then
        echo "peers: Node.js >= 20 is needed, found '$(node --version 2>&1 || true)'" >&2
        exit 1
    fi
    npm --version >/dev/null
}

[ $# -gt 0 ] || { echo "usage: $0 llama|llama-src|ort|genai|chromium|node ..." >&2; exit 2; }
mkdir -p .venvs
exec 9>.venvs/.lock
flock 9  # parallel callers (tests, benchmarks) wait for one bootstrap instead of racing it
for peer in "$@"; do
    case $peer in
        llama) ensure_llama ;;
        llama-src) ensure_llama_src ;;
        ort) ensure_venv ort "$ORT_REQS" ;;
        genai) ensure_venv genai "$GENAI_REQS" ;;
        chromium) ensure_chromium ;;
        node) ensure_node ;;
        *) echo "peers: unknown peer '$peer' (llama, llama-src, ort, genai, chromium, node)" >&2; exit 2 ;;
    esac
done
