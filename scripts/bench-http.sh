#!/usr/bin/env bash
# HTTP benchmark (not a test): the same spin-sdk 7 hello component served by `moa up` and by
# `wasmtime serve` (wasmtime-cli 48.0.8, the wasmtime moa links), plus a bare hyper hello server,
# all driven by the same wrk settings after a warm-up. Prints a table and one RESULT line.
#
#   scripts/bench-http.sh            # DURATION=10 CONNECTIONS=32 WRK_THREADS=1 ROUNDS=3 by default
#
# The contenders take turns, ROUNDS times, and each reports its median: on a 2-core machine shared
# with the load generator one 10 s run of the same server varies by up to ±30%.
#
# Both wasm servers run in two modes: a fresh instance per request (moa's default, the isolation
# guarantee; wasmtime serve --max-instance-reuse-count 1) and instance reuse (moa
# max_instance_reuse = 128; wasmtime serve's default). moa runs as users run it: its default
# configuration, one JSON log line per request included. The RESULT line compares both modes, and
# adds the host's own per-request instantiation time (p50, from /metrics) and the time from starting
# `moa up` with a warm compile cache to its first answered request.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

# Error backtraces are not part of serving; a developer shell often has them on.
unset RUST_BACKTRACE RUST_LIB_BACKTRACE
DURATION="${DURATION:-10}"
CONNECTIONS="${CONNECTIONS:-32}"
WRK_THREADS="${WRK_THREADS:-1}"
WARMUP="${WARMUP:-3}"
ROUNDS="${ROUNDS:-3}"
TOOLS="$MOA_CACHE_HOME/tools"
WASMTIME="$TOOLS/bin/wasmtime"

ensure_toolchain
if ! command -v wrk >/dev/null; then
  log "installing wrk"
  apt-get update -qq && apt-get install -y -qq wrk
fi
if ! "$WASMTIME" --version 2>/dev/null | grep -q '^wasmtime 48.0.8'; then
  log "installing wasmtime-cli 48.0.8 (about 18 minutes on 2 cores, once)"
  CARGO_TARGET_DIR="$MOA_CACHE_HOME/tools-target" cargo install wasmtime-cli --version 48.0.8 --locked --root "$TOOLS"
fi
log "building moa and the bare hyper server (release)"
(cd "$MOA_ROOT" && cargo build --release --workspace --bin moa --example hyper_hello)
build_components

HELLO="$MOA_ROOT/components/target/wasm32-wasip2/release/hello.wasm"
WORK="$(mktemp -d)"
SERVER_PID=""
cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT


wait_ready() { # url
  for _ in $(seq 1 300); do
    curl -fs -o /dev/null "$1" && return 0
    sleep 0.1
  done
  echo "server at $1 did not come up" >&2
  return 1
}

# wrk latency figures come as 950.00us / 1.23ms / 1.01s: print them in ms.
to_ms() { awk '{v=$1; if (v ~ /us$/) {sub(/us$/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /s$/) {sub(/s$/,"",v); v=v*1000}; printf "%.2f", v}'; }

declare -A RPS P50 P99 RUNS
ORDER=()

measure() { # name url
  local name="$1" url="$2" out
  wait_ready "$url"
  wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${WARMUP}s" "$url" >/dev/null
  out="$(wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency "$url")"
  if echo "$out" | grep -q 'Non-2xx'; then
    echo "$out" >&2
    echo "error: $name answered non-2xx responses" >&2
    exit 1
  fi
  local rps p50 p99
  rps="$(echo "$out" | awk '/^Requests\/sec/ {printf "%.0f", $2}')"
  p50="$(echo "$out" | awk '$1=="50%" {print $2}' | to_ms)"
  p99="$(echo "$out" | awk '$1=="99%" {print $2}' | to_ms)"
  # One "rps p50 p99" line per round; the table takes the round with the median req/s.
  RUNS[$name]+="$rps $p50 $p99"$'\n'
  [[ " ${ORDER[*]} " == *" $name "* ]] || ORDER+=("$name")
  log "$name: $rps req/s, p50 $p50 ms, p99 $p99 ms"
}

median_run() { # name -> sets RPS/P50/P99[name] from the round with the median req/s
  local line
  line="$(printf '%s' "${RUNS[$1]}" | sort -n | awk '{a[NR]=$0} END {print a[int((NR+1)/2)]}')"
  read -r RPS[$1] P50[$1] P99[$1] <<<"$line"
}

stop_server() {
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
}

cat > "$WORK/spin.toml" <<EOF
spin_manifest_version = 2
[application]
name = "bench"
[[trigger.http]]
route = "/..."
component = "hello"
[component.hello]
source = "$HELLO"
EOF
printf '[limits]\nmax_instance_reuse = 128\n' > "$WORK/reuse.toml"

run_moa() { # name extra-args...
  local name="$1"; shift
  local port admin; port="$(free_port)"; admin="$(free_port)"
  "$CARGO_TARGET_DIR/release/moa" up -f "$WORK/spin.toml" --listen "127.0.0.1:$port" \
    --admin-listen "127.0.0.1:$admin" --state-dir "$WORK/state" "$@" >"$WORK/$name.log" 2>&1 &
  SERVER_PID=$!
  measure "$name" "http://127.0.0.1:$port/hello"
  curl -fs "http://127.0.0.1:$admin/metrics" >"$WORK/$name.metrics"
  stop_server
}

# p50 of moa_instantiation_duration_seconds in microseconds, from a /metrics scrape.
instantiate_p50_us() { # metrics-file
  python3 - "$1" <<'PY'
import re, sys
buckets = []
for line in open(sys.argv[1]):
    m = re.match(r'moa_instantiation_duration_seconds_bucket\{[^}]*le="([^"]+)"[^}]*\} (\S+)', line)
    if m:
        buckets.append((float("inf") if m.group(1) == "+Inf" else float(m.group(1)), float(m.group(2))))
buckets.sort()
total = buckets[-1][1] if buckets else 0
lower, below = 0.0, 0.0
for le, count in buckets:
    if count >= total / 2:
        # linear interpolation inside the bucket that holds the median
        share = (total / 2 - below) / (count - below) if count > below else 1.0
        print(f"{(lower + (le - lower) * share) * 1e6:.0f}")
        break
    lower, below = le, count
PY
}

# Milliseconds from starting `moa up` (warm compile cache) to its first 200, best of three.
first_response_ms() {
  python3 - "$CARGO_TARGET_DIR/release/moa" "$WORK" <<'PY'
import socket, subprocess, sys, time, http.client
moa, work = sys.argv[1], sys.argv[2]
best = None
for _ in range(3):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    started = time.monotonic()
    proc = subprocess.Popen([moa, "up", "-f", f"{work}/spin.toml", "--listen", f"127.0.0.1:{port}",
                             "--state-dir", f"{work}/state"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
                c.request("GET", "/hello")
                if c.getresponse().status == 200:
                    break
            except OSError:
                time.sleep(0.002)
        took = (time.monotonic() - started) * 1000
        best = took if best is None else min(best, took)
    finally:
        proc.terminate(); proc.wait()
print(f"{best:.0f}")
PY
}

run_wasmtime() { # name extra-args...
  local name="$1"; shift
  local port; port="$(free_port)"
  "$WASMTIME" serve -Scli --addr "127.0.0.1:$port" "$@" "$HELLO" >"$WORK/$name.log" 2>&1 &
  SERVER_PID=$!
  measure "$name" "http://127.0.0.1:$port/hello"
  stop_server
}

for round in $(seq 1 "$ROUNDS"); do
  log "round $round of $ROUNDS"
  run_moa "moa"
  run_wasmtime "wasmtime-serve" --max-instance-reuse-count 1
  port="$(free_port)"
  "$CARGO_TARGET_DIR/release/examples/hyper_hello" "127.0.0.1:$port" >"$WORK/hyper.log" 2>&1 &
  SERVER_PID=$!
  measure "hyper" "http://127.0.0.1:$port/hello"
  stop_server
  run_moa "moa-reuse" --runtime-config-file "$WORK/reuse.toml"
  run_wasmtime "wasmtime-serve-reuse"
done
for name in "${ORDER[@]}"; do median_run "$name"; done
INSTANTIATE_US="$(instantiate_p50_us "$WORK/moa.metrics")"
FIRST_MS="$(first_response_ms)"
log "moa: instantiation p50 ${INSTANTIATE_US} us; first response ${FIRST_MS} ms after start (warm cache)"

echo
echo "wrk -t$WRK_THREADS -c$CONNECTIONS -d${DURATION}s (after ${WARMUP}s warm-up), median of $ROUNDS rounds, $(nproc) cores shared by server and load generator"
printf '%-22s %12s %10s %10s\n' server "req/s" "p50 ms" "p99 ms"
for name in "${ORDER[@]}"; do
  printf '%-22s %12s %10s %10s\n' "$name" "${RPS[$name]}" "${P50[$name]}" "${P99[$name]}"
done
echo
ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }
echo "RESULT http moa_rps=${RPS[moa]} wasmtime_serve_rps=${RPS[wasmtime-serve]} hyper_rps=${RPS[hyper]} moa_vs_wasmtime=$(ratio "${RPS[moa]}" "${RPS[wasmtime-serve]}") moa_reuse_vs_wasmtime_reuse=$(ratio "${RPS[moa-reuse]}" "${RPS[wasmtime-serve-reuse]}") moa_vs_hyper=$(ratio "${RPS[moa]}" "${RPS[hyper]}") moa_p99_ms=${P99[moa]} instantiate_us_p50=${INSTANTIATE_US} first_response_ms=${FIRST_MS}"
