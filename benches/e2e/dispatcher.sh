#!/usr/bin/env bash
# CPU per call through a dispatcher set, sipedge beside Kamailio's dispatcher
# (issue 12's benchmark), same load, one run, on loopback:
#   benches/e2e/dispatcher.sh [RATE] [SECONDS]
# Two SIPp gateways (tools/sipp/uas.xml, answering probes with -aa) and the
# SIPp caller (tools/sipp/uac_users_domain.xml to users of
# pstn.example.test) on CPU 0; the proxy alone on CPU 1: sipedge (1 shard,
# [[dispatcher]] round-robin, probes every 2 s) or Kamailio
# (benches/e2e/kamailio/kam_dispatcher.cfg: ds_select_dst round-robin,
# failure_route failover, probes every 2 s; -n 1, tlsf, 4 MiB buffer).
# RATE calls/s (default 1000) for SECONDS (default 10); CPU per call is the
# proxy's (every Kamailio process) user+system time over the run, per call
# completed. Needs `cargo build --release`, sipp and kamailio.
set -euo pipefail
cd "$(dirname "$0")/../.."
R=${1:-1000}
T=${2:-10}
N=$((R * T))
TMP=$(mktemp -d)
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
	pkill -9 -f "$TMP/" 2>/dev/null || true
	rm -rf "$TMP"
}
trap cleanup EXIT
hz=$(getconf CLK_TCK)
cpu_of() {
	local s=0 p
	for p in "$@"; do
		[ -r "/proc/$p/stat" ] && s=$((s + $(awk '{print $14 + $15}' "/proc/$p/stat")))
	done
	echo "$s"
}
for p in 35081 35082; do
	taskset -c 0 sipp -sf tools/sipp/uas.xml -aa -i 127.0.0.1 -p "$p" -bg \
		-trace_stat -stf "$TMP/uas$p.csv" -fd 1 >/dev/null 2>&1 || true # -bg exits 99
done
sleep 1
run() { # run LABEL PORT PIDS...
	local label=$1 port=$2
	shift 2
	local c0 c1
	c0=$(cpu_of "$@")
	taskset -c 0 timeout $((T * 3 + 60)) sipp -sf tools/sipp/uac_users_domain.xml \
		-key domain pstn.example.test -inf tools/sipp/users.csv -i 127.0.0.1 -p 35090 \
		-m "$N" -r "$R" -trace_stat -stf "$TMP/$label.csv" -fd 1 -nostdin \
		"127.0.0.1:$port" >/dev/null 2>&1 || true
	c1=$(cpu_of "$@")
	local ok fail
	ok=$(tail -1 "$TMP/$label.csv" | cut -d';' -f16)
	fail=$(tail -1 "$TMP/$label.csv" | cut -d';' -f18)
	python3 - "$label" "$c0" "$c1" "$hz" "$ok" "$fail" "$R" >>"$TMP/report" <<'PY'
import json, sys
label, c0, c1, hz, ok, fail, r = sys.argv[1:]
cpu = (float(c1) - float(c0)) / float(hz)
print(json.dumps({"proxy": label, "rate": int(r), "calls_ok": int(ok), "calls_failed": int(fail),
                  "cpu_us_per_call": round(cpu / max(int(ok), 1) * 1e6, 2)}))
PY
	tail -1 "$TMP/report"
}

cat >"$TMP/edge.toml" <<TOML
listen = ["udp:127.0.0.1:35060"]
domain = ["example.test"]
shards = 1
[[dispatcher]]
name = "gw"
domains = ["pstn.example.test"]
destinations = ["sip:127.0.0.1:35081", "sip:127.0.0.1:35082"]
algorithm = "round-robin"
probe_interval = "2s"
TOML
taskset -c 1 target/release/sipedge run --config "$TMP/edge.toml" --data-dir "$TMP/data" \
	>"$TMP/sipedge.log" 2>&1 &
S=$!
PIDS+=("$S")
sleep 1
run sipedge 35060 "$S"
kill -INT "$S"
wait "$S" || true

printf '1 sip:127.0.0.1:35081\n1 sip:127.0.0.1:35082\n' >"$TMP/dispatcher.list"
cp benches/e2e/kamailio/kam_common.inc "$TMP/"
sed "s#@DSLIST@#$TMP/dispatcher.list#" benches/e2e/kamailio/kam_dispatcher.cfg >"$TMP/kam.cfg"
taskset -c 1 kamailio -f "$TMP/kam.cfg" -DD -E -m 1024 -n 1 -x tlsf -X tlsf -A BIGBUF \
	>"$TMP/kamailio.log" 2>&1 &
PIDS+=("$!")
sleep 2
mapfile -t KP < <(pgrep -f "$TMP/kam.cfg")
run kamailio 15060 "${KP[@]}"

python3 - "$TMP/report" <<'PY'
import json, sys
rows = {j["proxy"]: j for j in map(json.loads, open(sys.argv[1]))}
s, k = rows.get("sipedge"), rows.get("kamailio")
if s and k:
    print(f"CPU per call sipedge/kamailio: {s['cpu_us_per_call'] / max(k['cpu_us_per_call'], 1e-9):.2f} "
          f"({s['cpu_us_per_call']} vs {k['cpu_us_per_call']} us)")
PY
