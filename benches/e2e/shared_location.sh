#!/usr/bin/env bash
# Two edge nodes sharing location, side by side (issue 11's peer benchmark):
#   benches/e2e/shared_location.sh RATE [USERS] [SECONDS]
# sipedge: nodes A and B (1 shard each) on one Redis (appendonly, everysec).
# Kamailio twice (benches/e2e/kamailio/kam_dmq_registrar.cfg, -n 2 UDP
# workers each, tlsf, 4 MiB socket buffer): nodes A and B replicating an
# in-memory usrloc by DMQ (dmq_usrloc; nothing durable), then the same with
# every change also written to one Redis by db_redis (usrloc db_mode 1). Same placement for both: A on CPU 1, B, Redis,
# sipload and the probe on CPU 0. USERS register once on A at RATE (bindings
# created, not measured), then sipload refreshes them at RATE REGISTER/s for SECONDS
# while benches/e2e/visibility_probe.py measures, from outside, the time from
# A's 200 to B forwarding a request to the new contact (one fresh AoR every
# 50 ms). CPU per REGISTER: every process of the pair (sipedge: A + B + Redis;
# Kamailio: all processes of both nodes, + Redis for db_redis) over the measured run, per REGISTER
# answered 200. Only loopback; every run bounded by `timeout`. Needs
# `cargo build --release --workspace`, redis-server and kamailio.
set -euo pipefail
cd "$(dirname "$0")/../.."
R=${1:?rate}
U=${2:-100000}
T=${3:-10}
KAM_CHILDREN=${KAM_CHILDREN:-2}
RP=26379
TMP=$(mktemp -d)
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
	pkill -9 -f "$TMP/k" 2>/dev/null || true
	rm -rf "$TMP"
}
trap cleanup EXIT
hz=$(getconf CLK_TCK)
cpu_of() { # cpu_of PID...: user+system ticks summed
	local s=0 p
	for p in "$@"; do
		[ -r "/proc/$p/stat" ] && s=$((s + $(awk '{print $14 + $15}' "/proc/$p/stat")))
	done
	echo "$s"
}
wait_udp() { # wait_udp PORT: an OPTIONS is answered
	for _ in $(seq 100); do
		python3 - "$1" 2>/dev/null <<'PY' && return 0
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.2); s.bind(("127.0.0.1", 0))
p = s.getsockname()[1]
s.sendto((f"OPTIONS sip:127.0.0.1:{sys.argv[1]} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{p};branch=z9hG4bKw{p}\r\n"
          f"Max-Forwards: 70\r\nFrom: <sip:w@127.0.0.1>;tag=1\r\nTo: <sip:127.0.0.1>\r\nCall-ID: w{p}\r\n"
          "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode(), ("127.0.0.1", int(sys.argv[1])))
s.recvfrom(65535)
PY
		sleep 0.1
	done
	echo "nothing answers on 127.0.0.1:$1" >&2
	tail -n 5 "$TMP"/*.log >&2
	exit 1
}
measure() { # measure LABEL A_PORT B_PORT PIDS...: fill, then load + probe
	local label=$1 a=$2 b=$3
	shift 3
	taskset -c 0 timeout 300 target/release/sipload --role uac --scenario register \
		--target "127.0.0.1:$a" --users "$U" --rate "$R" --count "$U" --json --quiet >/dev/null
	local c0 c1 p parts0=() parts=""
	c0=$(cpu_of "$@")
	for p in "$@"; do parts0+=("$(cpu_of "$p")"); done
	taskset -c 0 timeout $((T + 10)) python3 benches/e2e/visibility_probe.py "$a" "$b" "$T" \
		>"$TMP/$label.probe" &
	local probe=$!
	taskset -c 0 timeout $((T * 3 + 30)) target/release/sipload --role uac --scenario register \
		--target "127.0.0.1:$a" --users "$U" --rate "$R" --duration "$T" --max-inflight 50000 \
		--json --quiet >"$TMP/$label.json" || true
	wait "$probe" || true
	c1=$(cpu_of "$@")
	local i=0 gone=0
	for p in "$@"; do
		parts+="$(($(cpu_of "$p") - parts0[i])),"
		[ -e "/proc/$p" ] || gone=$((gone + 1))
		i=$((i + 1))
	done
	[ "$gone" = 0 ] || echo "$label: $gone of its $# processes exited during the run: CPU figures are invalid" >&2
	python3 - "$label" "$TMP/$label.json" "$TMP/$label.probe" "$c0" "$c1" "$hz" "$R" "$parts" >>"$TMP/report" <<'PY'
import json, sys
label, out, probe, c0, c1, hz, r, parts = sys.argv[1:]
u = json.load(open(out))["uac"]
v = json.loads(open(probe).read() or "{}")
ok = u["succeeded"]
cpu = (float(c1) - float(c0)) / float(hz)
lat = u["latency_us"].get("register", {})
print(json.dumps({"proxy": label, "offered": int(r), "answered_200": ok, "failed": u["failed"],
                  "cpu_us_per_register": round(cpu / max(ok, 1) * 1e6, 2),
                  "cpu_us_per_process": [round(float(t) / float(hz) / max(ok, 1) * 1e6, 1)
                                         for t in parts.split(",") if t],
                  "register_p50_ms": lat.get("p50", 0) / 1000, "register_p99_ms": lat.get("p99", 0) / 1000,
                  "visibility": v}))
PY
	tail -1 "$TMP/report"
}

# sipedge on Redis
taskset -c 0 redis-server --port "$RP" --bind 127.0.0.1 --dir "$TMP" --appendonly yes \
	--appendfsync everysec --save "" >"$TMP/redis.log" 2>&1 &
REDIS=$!
PIDS+=("$REDIS")
for _ in $(seq 100); do redis-cli -p "$RP" ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done
taskset -c 1 target/release/sipedge run --shards 1 --listen udp:127.0.0.1:26060 \
	--domain 127.0.0.1 --store "redis://127.0.0.1:$RP" >"$TMP/a.log" 2>&1 &
A=$!
PIDS+=("$A")
taskset -c 0 target/release/sipedge run --shards 1 --listen udp:127.0.0.1:26061 \
	--domain 127.0.0.1 --store "redis://127.0.0.1:$RP" >"$TMP/b.log" 2>&1 &
B=$!
PIDS+=("$B")
wait_udp 26060
wait_udp 26061
# order: A, B, Redis
measure sipedge 26060 26061 "$A" "$B" "$REDIS"
kill -INT "$A" "$B"
wait "$A" "$B" || true
kill "$REDIS"
wait "$REDIS" || true

kamailio_pair() { # kamailio_pair LABEL [-A WITH_DB_REDIS]: both nodes, measured, stopped
	local label=$1
	shift
	sed "s/@SELF@/15070/g; s/@PEER@/15071/g; s/@REDIS@/$RP/g" \
		benches/e2e/kamailio/kam_dmq_registrar.cfg >"$TMP/ka.cfg"
	sed "s/@SELF@/15071/g; s/@PEER@/15070/g; s/@REDIS@/$RP/g" \
		benches/e2e/kamailio/kam_dmq_registrar.cfg >"$TMP/kb.cfg"
	taskset -c 1 kamailio -f "$TMP/ka.cfg" "$@" -DD -E -m 1024 -n "$KAM_CHILDREN" \
		-x tlsf -X tlsf >"$TMP/ka.log" 2>&1 &
	PIDS+=("$!")
	taskset -c 0 kamailio -f "$TMP/kb.cfg" "$@" -DD -E -m 1024 -n "$KAM_CHILDREN" \
		-x tlsf -X tlsf >"$TMP/kb.log" 2>&1 &
	PIDS+=("$!")
	wait_udp 15070
	wait_udp 15071
	sleep 1
	local kp
	mapfile -t kp < <(pgrep -f "$TMP/k[ab].cfg")
	measure "$label" 15070 15071 "${kp[@]}" ${REDIS:+"$REDIS"}
	pkill -9 -f "$TMP/k[ab].cfg" || true
	sleep 1
}

# Kamailio, in-memory usrloc replicated by DMQ (not durable: no store)
REDIS=
kamailio_pair kamailio-dmq

# Kamailio, DMQ replication plus usrloc written through to Redis by db_redis
# (db_mode 1: each save also written to Redis; durable like sipedge's
# write-through), same Redis settings. (db_mode 3, every save and lookup in
# Redis, -A WITH_DB_REDIS_ONLY, is not run: db_redis answered 1,063 of 4,000
# REGISTERs offered at 2,000/s with 1,000 users here, p50 20 s.)
mkdir "$TMP/r2"
taskset -c 0 redis-server --port "$RP" --bind 127.0.0.1 --dir "$TMP/r2" --appendonly yes \
	--appendfsync everysec --save "" >"$TMP/redis2.log" 2>&1 &
REDIS=$!
PIDS+=("$REDIS")
for _ in $(seq 100); do redis-cli -p "$RP" ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done
redis-cli -p "$RP" HSET version:entry::location table_name location table_version 9 >/dev/null
kamailio_pair kamailio-dmq-redis -A WITH_DB_REDIS

python3 - "$TMP/report" <<'PY'
import json, sys
rows = {j["proxy"]: j for j in map(json.loads, open(sys.argv[1]))}
s = rows.get("sipedge")
for name in ("kamailio-dmq", "kamailio-dmq-redis"):
    k = rows.get(name)
    if not (s and k):
        continue
    print(f"CPU per REGISTER sipedge/{name}: {s['cpu_us_per_register'] / max(k['cpu_us_per_register'], 1e-9):.2f} "
          f"({s['cpu_us_per_register']} vs {k['cpu_us_per_register']} us)")
    for q in ("p50_ms", "p99_ms"):
        a, b = s["visibility"].get(q), k["visibility"].get(q)
        if a is not None and b:
            print(f"visibility {q} sipedge/{name}: {a / b:.2f} ({a} vs {b} ms)")
PY
