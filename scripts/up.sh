#!/usr/bin/env bash
# Sets up a fresh machine, builds the host and the reference app, and serves it on embedded
# defaults (no servers needed): http://127.0.0.1:3000/hello, /p2, /counter.
# Extra arguments go to `moa up` (e.g. --listen 0.0.0.0:3000).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
ensure_toolchain
build_host
build_components
cd "$MOA_ROOT"
exec "$MOA_BIN" up -f spin.toml --log-format text "$@"
