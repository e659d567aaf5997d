#!/usr/bin/env bash
# Snapshot load from Redis (issue 11's benchmark): COUNT bindings (default
# 1,000,000) registered through node A, then node B starts on the same
# Redis and logs how long loading them took (SCAN + pipelined HGETALL,
# decoding, partitioning):
#   benches/e2e/redis_snapshot.sh [COUNT] [SHARDS_OF_B]
# Loopback only; bounded by `timeout`. Needs `cargo build --release --workspace`.
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-1000000}
S=${2:-2}
RP=26380
TMP=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT
redis-server --port "$RP" --bind 127.0.0.1 --dir "$TMP" --save "" --appendonly no >"$TMP/redis.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do redis-cli -p "$RP" ping >/dev/null 2>&1 && break; sleep 0.1; done
target/release/sipedge run --shards 1 --listen udp:127.0.0.1:26070 --domain 127.0.0.1 \
	--store "redis://127.0.0.1:$RP" >"$TMP/a.log" 2>&1 &
A=$!
PIDS+=("$A")
for _ in $(seq 100); do grep -q 'started:' "$TMP/a.log" && break; sleep 0.1; done
timeout 600 target/release/sipload --role uac --scenario register --target 127.0.0.1:26070 \
	--users "$N" --rate 20000 --count "$N" --duration "$((N / 20000 + 30))s" --max-inflight 50000 --json --quiet >"$TMP/fill.json" || true
python3 -c "import json,sys; u=json.load(open(sys.argv[1]))['uac']; print(f\"filled: {u['succeeded']} registered, {u['failed']} failed\")" "$TMP/fill.json"
echo "redis keys: $(redis-cli -p "$RP" dbsize), used memory: $(redis-cli -p "$RP" info memory | grep -m1 used_memory_human)"
kill -INT "$A"
wait "$A" || true
t0=$(date +%s.%N)
target/release/sipedge run --shards "$S" --listen udp:127.0.0.1:26071 --domain 127.0.0.1 \
	--store "redis://127.0.0.1:$RP" >"$TMP/b.log" 2>&1 &
B=$!
PIDS+=("$B")
for _ in $(seq 1200); do grep -q 'started:' "$TMP/b.log" && break; sleep 0.1; done
t1=$(date +%s.%N)
grep -o "shared store.*loaded in [^,]*" "$TMP/b.log" || tail -5 "$TMP/b.log"
echo "B start-up to its 'started' line: $(python3 -c "print(f'{$t1 - $t0:.2f} s')")"
echo "B RSS: $(awk "/VmRSS/ {print \$2, \$3}" "/proc/$B/status" 2>/dev/null)"
