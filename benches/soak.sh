#!/usr/bin/env bash
# benches/soak.sh — sipedge over time (issue 14). Not in CI: bounded by
# --minutes (default 30), every load generator by its own --duration and a
# timeout. Traffic only on 127.0.0.1.
#
#   benches/soak.sh [--minutes 30] [--rate 6000] [--users 2000] [--warmup 10]
#                   [--io auto|uring|mio] [--no-build] [--out DIR]
#
# One shard (pinned to CPU 0; the load generators on the other CPUs) with a
# users file, serving 127.0.0.1 as its domain, and at once, for the whole run:
#   - calls: sipload UAC → sipedge (location lookup) → sipload UAS, at --rate
#     calls/s; the UAS registered --users users (user0…) with digest auth;
#   - REGISTER with digest auth (401, then credentials): users reg0…, at
#     --rate/4 per second;
#   - MESSAGE to the registered users (delivered to the UAS): --rate/4;
#   - OPTIONS to the edge itself: --rate/4.
# The default rate keeps the shard about half busy on this machine (2 vCPUs,
# the load generators on the other): 44 % of its core measured at 6,000
# calls/s with 1,500/s of each of the others; the mean is printed.
#
# Every 10 s it samples sipedge's resident memory (/proc/PID/status VmRSS),
# its CPU (utime+stime over the interval), live transactions, wheel timers,
# bindings and requests by method (`sipedge ctl stats --json`) into
# OUT/samples.tsv. At the end:
#   - RSS: the largest sample after --warmup minutes within 5 % of the first
#     sample after it (10 minutes by default: at 6,000 calls/s RSS reached
#     its level ~8.5 minutes in — 480 MB at 5 min, 504 MB at 8, flat after
#     and 496 MB at 30);
#   - tables: live transactions, transaction timers, bindings and registrar
#     timers in the last quarter of the run no larger than 1.1× their maximum
#     in the first quarter after warm-up (they follow the load, not the
#     uptime);
#   - counters: sipedge's INVITE, MESSAGE and OPTIONS requests equal the
#     load generators' attempts plus their retransmissions; the REGISTERs it
#     authenticated equal the REGISTER generator's successes plus the UAS's
#     registrations, and every REGISTER it saw was either challenged or
#     authenticated.
# Prints a verdict per check and exits 1 when one fails.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
MINUTES=30 RATE=6000 USERS=2000 WARMUP=10 IO=auto BUILD=1
OUT="${TMPDIR:-/tmp}/sipedge-soak-$(date +%Y%m%d-%H%M%S)"
while (($#)); do
	case "$1" in
	--minutes) MINUTES="$2"; shift ;;
	--rate) RATE="$2"; shift ;;
	--users) USERS="$2"; shift ;;
	--warmup) WARMUP="$2"; shift ;;
	--io) IO="$2"; shift ;;
	--no-build) BUILD=0 ;;
	--out) OUT="$2"; shift ;;
	-h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	*) echo "unknown option $1" >&2; exit 2 ;;
	esac
	shift
done
((MINUTES >= 1 && MINUTES <= 600)) || { echo "--minutes 1..600" >&2; exit 2; }
((WARMUP < MINUTES)) || { echo "--warmup must be below --minutes" >&2; exit 2; }
command -v jq >/dev/null || { echo "jq is needed (apt-get install jq)" >&2; exit 2; }
mkdir -p "$OUT"
SIPEDGE="${SIPEDGE_BIN:-$ROOT/target/release/sipedge}" SIPLOAD="$ROOT/target/release/sipload"
if ((BUILD)); then
	(cd "$ROOT" && cargo build --release --quiet && cargo build --release --quiet -p sipload)
fi
NCPU="$(nproc)"
LG_CPUS="$((NCPU > 1 ? 1 : 0))-$((NCPU - 1))"
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PORT="$(free_port)" UAS_PORT="$(free_port)"
SECS=$((MINUTES * 60))
SIDE=$((RATE / 4 > 0 ? RATE / 4 : 1))
PW="soak-pw"

# Users: user0… (the UAS's registrations) and reg0… (the REGISTER load).
awk -v n="$USERS" -v pw="$PW" 'BEGIN { for (i = 0; i < n; i++) {
	printf "[[user]]\nname = \"user%d\"\ndomain = \"127.0.0.1\"\npassword = \"%s\"\n", i, pw
	printf "[[user]]\nname = \"reg%d\"\ndomain = \"127.0.0.1\"\npassword = \"%s\"\n", i, pw } }' >"$OUT/users.toml"
# REGISTERs authenticate; calls, MESSAGE and OPTIONS from loopback do not
# (the load generators are trusted peers here, as trunks would be).
cat >"$OUT/edge.toml" <<EOF
shards = 1
[auth]
algorithms = ["MD5", "SHA-256"]
[policy]
default = "allow"
networks = { loopback = ["127.0.0.0/8"] }
[[policy.rule]]
method = ["REGISTER"]
action = "require-auth"
[[policy.rule]]
source = ["loopback"]
action = "allow"
EOF
CTL="$OUT/ctl.sock"
# shellcheck disable=SC2086 # SOAK_WRAP is a word list on purpose (e.g. "heaptrack -o FILE")
taskset -c 0 ${SOAK_WRAP:-} "$SIPEDGE" run --io "$IO" --listen "udp:127.0.0.1:$PORT" --domain 127.0.0.1 \
	--users "$OUT/users.toml" --config "$OUT/edge.toml" --data-dir "$OUT/data" \
	--control "$CTL" >"$OUT/sipedge.log" 2>&1 &
EDGE=$!
PIDS+=("$EDGE")
for _ in $(seq 100); do grep -q 'started' "$OUT/sipedge.log" && break; sleep 0.1; done
grep -q 'started' "$OUT/sipedge.log" || { tail -5 "$OUT/sipedge.log"; exit 1; }

LOAD_S=$((SECS + 5))
sl() { # sl NAME ARGS…: a sipload run, its JSON report in OUT/NAME.json
	local name="$1"
	shift
	(timeout $((LOAD_S + 120)) taskset -c "$LG_CPUS" "$SIPLOAD" --json --quiet "$@" >"$OUT/$name.json" 2>"$OUT/$name.log" || true) &
	PIDS+=("$!")
}
# The UAS first: it registers its users (with auth) before the calls start.
(timeout $((LOAD_S + 180)) taskset -c "$LG_CPUS" "$SIPLOAD" --role uas --scenario call \
	--uas-listen "127.0.0.1:$UAS_PORT" --uas-register "$USERS" --registrar "127.0.0.1:$PORT" \
	--password "$PW" --domain 127.0.0.1 --expires 3600 --duration "$((LOAD_S + 60))s" --json --quiet \
	>"$OUT/uas.json" 2>"$OUT/uas.log" || true) &
UAS=$!
PIDS+=("$UAS")
sleep 5
ctl() { "$SIPEDGE" ctl --control "$CTL" --json "$@"; }
REGISTERED0="$(ctl stats | jq '.counters.sipedge_auth_authenticated_total // 0')"
echo "soak: $MINUTES min, calls $RATE/s, REGISTER/MESSAGE/OPTIONS $SIDE/s each, $USERS users; out $OUT"
echo "  UAS registrations accepted before the load: $REGISTERED0"
COMMON=(--role uac --target "127.0.0.1:$PORT" --duration "${LOAD_S}s" --domain 127.0.0.1)
sl calls "${COMMON[@]}" --scenario call --rate "$RATE" --users "$USERS" \
	--request-uri "sip:{user}@127.0.0.1:$PORT"
sl register "${COMMON[@]}" --scenario register --rate "$SIDE" --users "$USERS" --user-prefix reg \
	--password "$PW" --expires 600
sl message "${COMMON[@]}" --scenario message --rate "$SIDE" --users "$USERS" \
	--request-uri "sip:{user}@127.0.0.1:$PORT"
sl options "${COMMON[@]}" --scenario options --rate "$SIDE" --request-uri "sip:127.0.0.1:$PORT"

printf "t_s\trss_kib\ttransactions\ttimers\tbindings\tinvite\tregister\tmessage\toptions\tcpu_pct\tregistrar_timers\n" >"$OUT/samples.tsv"
HZ="$(getconf CLK_TCK)"
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$EDGE/stat"; } # utime + stime (its threads too)
T0="$(date +%s)" C0="$(cpu_ticks)" N0="$(date +%s%N)"
while (($(date +%s) - T0 < SECS)); do
	sleep 10
	kill -0 "$EDGE" 2>/dev/null || { echo "sipedge exited" >&2; tail -5 "$OUT/sipedge.log"; exit 1; }
	rss="$(awk '/^VmRSS:/ { print $2 }' "/proc/$EDGE/status")"
	c1="$(cpu_ticks)" n1="$(date +%s%N)"
	cpu="$(awk -v c="$((c1 - C0))" -v hz="$HZ" -v ns="$((n1 - N0))" 'BEGIN { printf "%.1f", c / hz * 1e9 / ns * 100 }')"
	C0="$c1" N0="$n1"
	ctl stats | jq -r --arg t "$(($(date +%s) - T0))" --arg rss "$rss" --arg cpu "$cpu" '.counters as $c | [
		$t, $rss, ($c.sipedge_txn_transactions_live // 0), ($c.sipedge_txn_timers // 0),
		($c.sipedge_registrar_bindings // 0),
		($c["sipedge_proxy_requests_by_method_total{method=\"INVITE\"}"] // 0),
		($c["sipedge_proxy_requests_by_method_total{method=\"REGISTER\"}"] // 0),
		($c["sipedge_proxy_requests_by_method_total{method=\"MESSAGE\"}"] // 0),
		($c["sipedge_proxy_requests_by_method_total{method=\"OPTIONS\"}"] // 0),
		$cpu,
		($c.sipedge_registrar_timers // 0)
		] | map(tostring) | join("\t")' >>"$OUT/samples.tsv"
	tail -1 "$OUT/samples.tsv" | awk -F'\t' '{ printf "  %5ds  RSS %d KiB  txns %d  timers %d  bindings %d  CPU %s %%\n", $1, $2, $3, $4, $5, $10 }'
done
# The generators end on their own (--duration); then the last transactions.
for name in calls register message options; do
	for _ in $(seq 120); do [[ -s "$OUT/$name.json" ]] && break; sleep 1; done
done
sleep 40
FINAL="$(ctl stats)"
echo "$FINAL" >"$OUT/final-stats.json"

cpu_mean="$(awk -F'\t' -v w="$((WARMUP * 60))" 'NR > 1 && $1 >= w { s += $10; n++ } END { printf "%.1f", n ? s / n : 0 }' "$OUT/samples.tsv")"
echo "  sipedge's mean CPU after warm-up: $cpu_mean % of one core (its capacity: ~100 %)"
fails=0
verdict() { # verdict OK|FAIL TEXT
	echo "  [$1] $2"
	[[ "$1" == OK ]] || fails=$((fails + 1))
}
# RSS after warm-up within 5 %.
read -r rss_first rss_max < <(awk -F'\t' -v w="$((WARMUP * 60))" 'NR > 1 && $1 >= w {
	if (!f) f = $2; if ($2 > m) m = $2 } END { print f + 0, m + 0 }' "$OUT/samples.tsv")
growth="$(awk -v a="$rss_first" -v b="$rss_max" 'BEGIN { printf "%.2f", (b - a) * 100 / (a ? a : 1) }')"
if awk -v g="$growth" 'BEGIN { exit !(g <= 5) }'; then r=OK; else r=FAIL; fi
verdict "$r" "RSS after ${WARMUP} min: first $rss_first KiB, max $rss_max KiB (+$growth %, bound 5 %)"
# Tables bounded: last quarter against the first quarter after warm-up.
for col in 3:transactions 4:timers 5:bindings 11:registrar_timers; do
	i="${col%%:*}" what="${col#*:}"
	read -r early late < <(awk -F'\t' -v i="$i" -v w="$((WARMUP * 60))" -v s="$SECS" 'NR > 1 && $1 >= w {
		q = (s - w) / 4
		if ($1 < w + q && $i > e) e = $i
		if ($1 >= s - q && $i > l) l = $i } END { print e + 0, l + 0 }' "$OUT/samples.tsv")
	if awk -v e="$early" -v l="$late" 'BEGIN { exit !(l <= e * 1.1 + 16) }'; then r=OK; else r=FAIL; fi
	verdict "$r" "$what: max $early early, $late late (bound 1.1x)"
done
# Counters against the load generators.
attempts() { jq -r '(.uac // .) as $c | ((($c.succeeded // 0) + ($c.failed // 0)) | tostring) + " " + (($c.retransmissions // 0) | tostring) + " " + (($c.succeeded // 0) | tostring) + " " + (($c.failed // 0) | tostring)' "$OUT/$1.json"; }
for pair in calls:INVITE message:MESSAGE options:OPTIONS; do
	name="${pair%%:*}" m="${pair#*:}"
	read -r att retr ok failed < <(attempts "$name")
	seen="$(jq -r --arg k "sipedge_proxy_requests_by_method_total{method=\"$m\"}" '.counters[$k] // 0' <<<"$FINAL")"
	want=$((att + retr))
	if ((seen == want)); then r=OK; else r=FAIL; fi
	verdict "$r" "$m: sipedge saw $seen, the generator sent $att (+$retr retransmitted); $ok succeeded, $failed failed"
done
read -r att retr ok failed < <(attempts register)
accepted="$(jq -r '.counters.sipedge_auth_authenticated_total // 0' <<<"$FINAL")"
challenged="$(jq -r '.counters.sipedge_auth_challenges_total // 0' <<<"$FINAL")"
seen="$(jq -r '.counters["sipedge_proxy_requests_by_method_total{method=\"REGISTER\"}"] // 0' <<<"$FINAL")"
if ((accepted == ok + REGISTERED0 && seen == accepted + challenged)); then r=OK; else r=FAIL; fi
verdict "$r" "REGISTER: sipedge authenticated $accepted = $ok by the generator ($failed failed, $retr retransmitted) + $REGISTERED0 by the UAS; $seen seen = authenticated + $challenged challenged"
((fails == 0)) && echo "soak: passed" || echo "soak: $fails check(s) failed"
exit $((fails > 0))
