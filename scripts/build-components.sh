#!/usr/bin/env bash
# Builds every component under components/ for wasm32-wasip2 (release), into components/target.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
ensure_toolchain
build_components
