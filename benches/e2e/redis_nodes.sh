#!/usr/bin/env bash
# Two sipedge nodes on one Redis (issue 11's benchmarks), on loopback:
#   benches/e2e/redis_nodes.sh RATE [USERS] [SECONDS]
# A (1 shard, CPU 1) takes RATE REGISTER/s from sipload (CPU 0) for SECONDS,
# each written through Redis (redis-server with appendonly yes, everysec,
# CPU 0); B (1 shard, CPU 0) only follows the change stream. Reports A's
# REGISTERs answered and its CPU per REGISTER, and the cross-node
# visibility: B's replication lag, from A's commit of a change to its
# application on B's replica (B logs p50/p99 when it stops). The same load
# against A on the embedded log follows, for the write-through cost.
# USERS register once first (bindings created), the measured run refreshes
# them. Only loopback; every run bounded by `timeout`. Needs
# `cargo build --release --workspace` and redis-server.
set -euo pipefail
cd "$(dirname "$0")/../.."
R=${1:?rate}
U=${2:-100000}
T=${3:-10}
RP=26379
TMP=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
start_node() { # start_node NAME CPU PORT ARGS...: sets NODE_PID
	local name=$1 c=$2 port=$3
	shift 3
	taskset -c "$c" target/release/sipedge run --shards 1 --listen "udp:127.0.0.1:$port" \
		--domain 127.0.0.1 "$@" >"$TMP/$name.log" 2>&1 &
	NODE_PID=$!
	PIDS+=("$NODE_PID")
	for _ in $(seq 100); do grep -q 'started:' "$TMP/$name.log" && return; sleep 0.1; done
	cat "$TMP/$name.log"
	exit 1
}
load() { # load PORT OUT: fill, then the measured refresh run
	taskset -c 0 timeout 300 target/release/sipload --role uac --scenario register \
		--target "127.0.0.1:$1" --users "$U" --rate 20000 --count "$U" --json --quiet >/dev/null
	local t0 t1 r0=0 r1=0
	[ -n "${REDIS:-}" ] && r0=$(cpu "$REDIS")
	t0=$(cpu "$3")
	taskset -c 0 timeout $((T * 3 + 30)) target/release/sipload --role uac --scenario register \
		--target "127.0.0.1:$1" --users "$U" --rate "$R" --duration "$T" --max-inflight 50000 \
		--json --quiet >"$2" || true
	t1=$(cpu "$3")
	[ -n "${REDIS:-}" ] && r1=$(cpu "$REDIS")
	echo "$t0 $t1 $r0 $r1" >"$2.cpu"
}
report() { # report LABEL OUT
	python3 - "$1" "$2" "$hz" "$R" <<'PY'
import json, sys
label, out, hz, r = sys.argv[1:]
d = json.load(open(out)); u = d["uac"]
t0, t1, r0, r1 = map(float, open(out + ".cpu").read().split())
cpu = (t1 - t0) / float(hz)
rcpu = (r1 - r0) / float(hz)
ok = u["succeeded"]
lat = u["latency_us"].get("register", {})
print(f"{label}: offered {r}/s, answered 200 {ok} failed {u['failed']} "
      f"({ok / max(d.get('elapsed_s', 0) or 1, 1e-9):.0f}/s over the run), "
      f"CPU per REGISTER {cpu / max(ok, 1) * 1e6:.1f} us (redis-server: {rcpu / max(ok, 1) * 1e6:.1f} us), "
      f"REGISTER latency p50 {lat.get('p50', 0) / 1000:.2f} ms p99 {lat.get('p99', 0) / 1000:.2f} ms")
PY
}

taskset -c 0 redis-server --port "$RP" --bind 127.0.0.1 --dir "$TMP" --appendonly yes \
	--appendfsync everysec --save "" >"$TMP/redis.log" 2>&1 &
REDIS=$!
PIDS+=("$REDIS")
for _ in $(seq 100); do redis-cli -p "$RP" ping >/dev/null 2>&1 && break; sleep 0.1; done

start_node a 1 26060 --store "redis://127.0.0.1:$RP"
A=$NODE_PID
start_node b 0 26061 --store "redis://127.0.0.1:$RP"
B=$NODE_PID
load 26060 "$TMP/a.json" "$A"
sleep 1
kill -INT "$B"
wait "$B" || true
report "redis write-through" "$TMP/a.json"
echo "cross-node visibility (B): $(grep -o 'replication_lag_seconds.*' "$TMP/b.log" || echo none)"
kill -INT "$A"
wait "$A" || true

REDIS=
start_node e 1 26062 --data-dir "$TMP/embedded"
E=$NODE_PID
load 26062 "$TMP/e.json" "$E"
report "embedded log" "$TMP/e.json"
kill -INT "$E"
wait "$E" || true
