#!/usr/bin/env bash
# REGISTER throughput at saturation with sipload, and sipedge's CPU per REGISTER.
#   benches/e2e/register_saturation.sh SHARDS RATE [USERS]
# One shard: sipedge pinned to CPU 1, sipload to CPU 0. Two shards: both share
# the CPUs with sipload (say so when quoting). 100,000 users register once,
# then RATE REGISTER/s are offered for 10 s. Needs `cargo build --release`.
set -euo pipefail
cd "$(dirname "$0")/../.."
S=${1:?shards}
R=${2:?rate}
U=${3:-100000}
PORT=26060
DATA=$(mktemp -d)
LOG=$(mktemp)
OUT=$(mktemp)
trap 'rm -rf "$DATA" "$LOG" "$OUT"' EXIT
if [ "$S" = 1 ]; then PIN=(taskset -c 1); LPIN=(taskset -c 0); else PIN=(); LPIN=(); fi
"${PIN[@]}" target/release/sipedge run --shards "$S" --listen "udp:127.0.0.1:$PORT" \
	--domain 127.0.0.1 --data-dir "$DATA" >"$LOG" 2>&1 &
P=$!
for _ in $(seq 100); do grep -q 'started:' "$LOG" && break; sleep 0.1; done
"${LPIN[@]}" timeout 120 target/release/sipload --role uac --scenario register \
	--target "127.0.0.1:$PORT" --users "$U" --rate 20000 --count "$U" --json --quiet >/dev/null
cpu() { awk '{print $14 + $15}' "/proc/$P/stat"; }
t0=$(cpu)
"${LPIN[@]}" timeout 120 target/release/sipload --role uac --scenario register \
	--target "127.0.0.1:$PORT" --users "$U" --rate "$R" --duration 10 --max-inflight 50000 \
	--json --quiet >"$OUT" || true
t1=$(cpu)
kill -INT "$P"
wait "$P" || true
grep -o 'replication_lag_seconds.*' "$LOG" || true
python3 - "$S" "$R" "$t0" "$t1" "$OUT" <<'PY'
import json, os, sys
s, r, t0, t1, out = sys.argv[1:]
d = json.load(open(out)); u = d["uac"]
hz = os.sysconf("SC_CLK_TCK")
cpu = (float(t1) - float(t0)) / hz
lat = u["latency_us"].get("register", {})
print(f"shards={s} offered={r}/s succeeded={u['succeeded']} failed={u['failed']} "
      f"retrans={u['retransmissions']} achieved={u['succeeded'] / d['elapsed_s']:.0f}/s "
      f"sipedge_cpu={cpu:.2f}s us/REGISTER={cpu * 1e6 / max(1, u['succeeded']):.2f} "
      f"p50/p99={lat.get('p50')}/{lat.get('p99')} us")
PY
