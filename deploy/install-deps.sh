#!/usr/bin/env bash
# Installs the Debian 12 packages kldrift needs to build, test and run, and nothing else.
# Idempotent: packages already present are skipped, and apt is not touched when nothing is missing.
# Used by the README's two commands, by .ci/run and by the Dockerfile.
#
#   deploy/install-deps.sh           # build + test + run dependencies
#   deploy/install-deps.sh --runtime # only the shared libraries kldriftd needs at run time
set -euo pipefail

build_packages=(
  build-essential cmake ninja-build pkg-config git ca-certificates
  protobuf-compiler libprotobuf-dev protobuf-compiler-grpc libgrpc++-dev
  libabsl-dev prometheus-cpp-dev libhwy-dev librocksdb-dev libgoogle-perftools-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  clang libclang-rt-14-dev clang-format openssl
  python3 python3-numpy python3-scipy python3-yaml
  prometheus prometheus-alertmanager yamllint nginx-light
)
# kubectl (tests/deploy runs `kubectl kustomize`): Debian's kubernetes-client, unless a kubectl is
# already on PATH (e.g. the kubectl package of the Google Cloud SDK repository, which conflicts).
if ! command -v kubectl >/dev/null 2>&1; then
  build_packages+=(kubernetes-client)
fi
runtime_packages=(
  libgrpc++1.51 libprotobuf32 libabsl20220623 libprometheus-cpp-pull1.0 libprometheus-cpp-core1.0
  libhwy1 librocksdb7.8 libtcmalloc-minimal4 ca-certificates
)

packages=("${build_packages[@]}")
if [[ "${1:-}" == "--runtime" ]]; then
  packages=("${runtime_packages[@]}")
fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
if [[ $(id -u) -ne 0 ]]; then
  echo "install-deps: missing packages and not root; run as root or install: ${missing[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps: done"
