#!/usr/bin/env bash
# benches/e2e/xdp.sh: the veth topology of the AF_XDP driver — Kamailio at its
# best (kernel sockets), sipedge --io uring, sipedge --io xdp and the floors,
# the same load, one run. Also reachable as `benches/e2e/run.sh --net veth ...`.
#
# Usage: benches/e2e/xdp.sh [--shape stateless|stateful|registrar] [--load sipload|sipp]
#                           [--rate R] [--duration S] [--repeat N] [--no-build]
#                           [--proxies kamailio,uring,xdp,floorB,floorX,direct]
#                           [--users N] [--reg-rate R] [--shards N]
# Topology (made here, removed at exit): namespaces sebench-a (the proxy, 198.18.0.1
# on a veth end with one queue) and sebench-b (UAC and UAS on 198.18.0.2).
# The proxy is pinned to CPU 1, the load generator to CPU 0. --shards N (sipedge
# only; the veth gets N queues) pins sipedge to CPUs 0..N-1, shared with the load.
# Loads: sipload (default rate 12,000 calls/s) or SIPp (`sipp -sn uac|uas` for the
# stateless shape, tools/sipp/uac.xml|uas.xml for the stateful one; default 3,000/s).
# Floors (stateless shape only; tools/floor/README.md): floorB is floor.c on a
# kernel socket (recvmmsg/sendmmsg, batches of 64), floorX is floor_xdp on AF_XDP;
# both gather for FLOOR_GATHER_US (default 200, sipedge's coalesce_us) after a
# wake-up with less than a batch.
# Shapes: stateless (--stateless, fixed upstream), stateful (transactions,
# Record-Route, fixed upstream), registrar (the UAS registers --users N users to
# the proxy, the UAC calls them at random, every call a location lookup; before
# the calls, N REGISTERs of new users and N of the same users again are timed:
# rows NAME/reg-add and NAME/reg-refresh, µs per REGISTER; sipload only).
# `direct` is no proxy: the UAC calls the UAS itself, the latency baseline
# (added latency = a proxy's p50/p99 minus direct's, at the same rate).
# SIPEDGE_ARGS: more arguments for both sipedge runs (e.g. a --config with
# [uring] coalesce_us = 0).
#
# Two figures per proxy, in µs of CPU per completed call (utime+stime from
# /proc/PID/stat, before and after each run):
#   proxy   the proxy's processes (all of Kamailio's);
#   all     every process involved: the proxy, sipload UAC and UAS, and the
#           ksoftirqd threads. On veth the XDP program and part of the receive
#           path run in the sender's softirq and are billed to the sender, so
#           only "all" shows whether a saving is real.
# Every load run is bounded: rate x duration calls, each sipload under timeout.
# Environment: XDP_MODE=skb runs the xdp proxy in generic (skb) mode.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
SHAPE=stateless LOAD=sipload RATE="" DURATION=10 PROXIES="" REPEAT=1 BUILD=1 USERS=20000 REG_RATE=5000 SHARDS=1
while (($#)); do
	case "$1" in
	--shape) SHAPE="$2"; shift ;;
	--rate) RATE="$2"; shift ;;
	--load) LOAD="$2"; shift ;;
	--users) USERS="$2"; shift ;;
	--reg-rate) REG_RATE="$2"; shift ;;
	--shards) SHARDS="$2"; shift ;;
	--duration) DURATION="$2"; shift ;;
	--proxies) PROXIES="$2"; shift ;;
	--repeat) REPEAT="$2"; shift ;;
	--no-build) BUILD=0 ;;
	--net) shift ;; # from run.sh --net veth
	-h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	*) echo "xdp.sh: unknown option $1" >&2; exit 2 ;;
	esac
	shift
done
[[ "$(id -u)" == 0 ]] || { echo "xdp.sh: needs root (network namespaces, XDP)" >&2; exit 2; }
case "$SHAPE" in stateless | stateful | registrar) ;; *) echo "xdp.sh: --shape stateless|stateful|registrar" >&2; exit 2 ;; esac
[[ "$SHAPE" == registrar && "$LOAD" == sipp ]] && { echo "xdp.sh: --shape registrar runs with --load sipload" >&2; exit 2; }
case "$LOAD" in
sipload) [[ "$SHAPE" == stateless ]] && RATE="${RATE:-12000}"; RATE="${RATE:-6000}" ;;
sipp) RATE="${RATE:-3000}"; command -v sipp >/dev/null || { echo "xdp.sh: --load sipp needs sipp (apt-get install sip-tester)" >&2; exit 2; } ;;
*) echo "xdp.sh: --load sipload|sipp" >&2; exit 2 ;;
esac
if [[ -z "$PROXIES" ]]; then
	PROXIES="kamailio,uring,xdp"
	[[ "$SHAPE" == stateless ]] && PROXIES+=",floorB,floorX"
fi
if ((BUILD)); then (cd "$ROOT" && cargo build --release -q -p sipedge -p sipload --example floor_xdp); fi
SIPEDGE="$ROOT/target/release/sipedge" SIPLOAD="$ROOT/target/release/sipload"
FLOORX="$ROOT/target/release/examples/floor_xdp" GATHER="${FLOOR_GATHER_US:-200}"
A=sebench-a B=sebench-b P=198.18.0.1 U=198.18.0.2 PORT=15060 UPORT=15080
OUT="$ROOT/benches/e2e/results/xdp-$SHAPE-$LOAD-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
FLOOR="$OUT/floor"
gcc -O2 -Wall -o "$FLOOR" "$ROOT/tools/floor/floor.c"
CLK_TCK="$(getconf CLK_TCK)"
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	sleep 0.3
	ip netns del "$A" 2>/dev/null || true
	ip netns del "$B" 2>/dev/null || true
}
trap cleanup EXIT
ip netns del "$A" 2>/dev/null || true
ip netns del "$B" 2>/dev/null || true
ip netns add "$A"
ip netns add "$B"
ip link add sebench0 numtxqueues "$SHARDS" numrxqueues "$SHARDS" type veth peer name sebench1 \
	numtxqueues "$SHARDS" numrxqueues "$SHARDS"
# sipedge's CPUs: 1 for one shard; with more, every CPU (shared with the load generator)
SE_CPUS=1
((SHARDS > 1)) && SE_CPUS="0-$((SHARDS - 1))"
ip link set sebench0 netns "$A"
ip link set sebench1 netns "$B"
ip -n "$A" addr add "$P/24" dev sebench0
ip -n "$B" addr add "$U/24" dev sebench1
for ns in "$A" "$B"; do ip -n "$ns" link set lo up; done
ip -n "$A" link set sebench0 up
ip -n "$B" link set sebench1 up
# Socket buffers as the other benches ask for (namespaced sysctls).
for ns in "$A" "$B"; do ip netns exec "$ns" sysctl -qw net.core.rmem_max=8388608 net.core.wmem_max=8388608 2>/dev/null || true; done

tree_pids() { # PID and its descendants
	local p="$1"
	echo "$p"
	for c in $(cat /proc/"$p"/task/*/children 2>/dev/null); do tree_pids "$c"; done
}
ticks() { # utime+stime of the given PIDs' trees
	local total=0 p line rest
	for root in "$@"; do
		for p in $(tree_pids "$root"); do
			line="$(cat "/proc/$p/stat" 2>/dev/null)" || continue
			rest="${line##*) }"
			read -r -a f <<<"$rest"
			total=$((total + f[11] + f[12]))
		done
	done
	echo "$total"
}
softirqd() { pgrep -x 'ksoftirqd/[0-9]+' | tr '\n' ' '; }

kam_cfg() { # the bench's Kamailio config, moved onto the veth addresses
	local d="$OUT/kamailio"
	mkdir -p "$d"
	for f in kam_common.inc "kam_$SHAPE.cfg"; do
		sed -e "s/127\.0\.0\.1:15060/$P:$PORT/g" -e "s/127\.0\.0\.1:15080/$U:$UPORT/g" \
			-e "s/127\.0\.0\.1/$P/g" "$HERE/kamailio/$f" >"$d/$f"
	done
	echo "$d"
}

start_proxy() { # start_proxy NAME: sets PROXY
	local name="$1" log="$OUT/$1.log"
	case "$name" in
	kamailio)
		local d
		d="$(kam_cfg)"
		(cd "$d" && exec ip netns exec "$A" taskset -c 1 kamailio -f "$d/kam_$SHAPE.cfg" -DD -E -m 1024 -n 1 -x tlsf -X tlsf -A BIGBUF) >"$log" 2>&1 &
		;;
	uring | xdp)
		rm -rf "$OUT/$name-data"
		local args=(run --io "$name" --shards "$SHARDS" --listen "udp:$P:$PORT" --data-dir "$OUT/$name-data" --log-level warn)
		case "$SHAPE" in
		stateless) args+=(--stateless --upstream "sip:$U:$UPORT") ;;
		stateful) args+=(--upstream "sip:$U:$UPORT") ;;
		registrar) args+=(--domain "$P") ;;
		esac
		if [[ "$name" == xdp && -n "${XDP_MODE:-}" ]]; then
			printf '[xdp]\nmode = "%s"\n' "$XDP_MODE" >"$OUT/xdp.toml"
			args+=(--config "$OUT/xdp.toml")
		fi
		# shellcheck disable=SC2206 # a word list on purpose
		args+=(${SIPEDGE_ARGS:-})
		echo "$SIPEDGE ${args[*]}" >"$OUT/$name.cmd"
		ip netns exec "$A" taskset -c "$SE_CPUS" "$SIPEDGE" "${args[@]}" >"$log" 2>&1 &
		;;
	floorB) ip netns exec "$A" taskset -c 1 "$FLOOR" B "$P:$PORT" "$U:$UPORT" 64 "$GATHER" >"$log" 2>&1 & ;;
	floorX) ip netns exec "$A" taskset -c 1 "$FLOORX" sebench0 "$P:$PORT" "$U:$UPORT" "$GATHER" >"$log" 2>&1 & ;;
	direct) PROXY="" TARGET="$U:$UPORT"; return 0 ;;
	*) echo "xdp.sh: unknown proxy $name" >&2; return 1 ;;
	esac
	TARGET="$P:$PORT"
	PROXY=$!
	PIDS+=("$PROXY")
	sleep 1.5
	kill -0 "$PROXY" 2>/dev/null || { echo "xdp.sh: $name did not start: $(tail -3 "$log")" >&2; return 1; }
}

# ---- load generators: uas_start; uac_run NAME ROUND COUNT, which runs one bounded
# load and sets OK P50 P99 UC (the UAC's CPU ticks)
case "$SHAPE" in
stateless) SIPP_UAC=(-sn uac) SIPP_UAS=(-sn uas) ;;
stateful) SIPP_UAC=(-sf "$ROOT/tools/sipp/uac.xml") SIPP_UAS=(-sf "$ROOT/tools/sipp/uas.xml") ;;
esac
RURI="sip:uas@$U:$UPORT" UAC_EXTRA=()
[[ "$SHAPE" == registrar ]] && RURI="sip:{user}@$P:$PORT" UAC_EXTRA=(--users "$USERS" --domain "$P")
uas_start() {
	if [[ "$LOAD" == sipp ]]; then
		ip netns exec "$B" taskset -c 0 sipp "${SIPP_UAS[@]}" -i "$U" -p "$UPORT" -nostdin -buff_size 4194304 \
			-timeout 7200 >"$OUT/uas-$1.log" 2>&1 &
	else
		local extra=()
		[[ "$SHAPE" == registrar ]] && extra=(--uas-register "$USERS" --registrar "$P:$PORT" --uas-register-rate "$REG_RATE" --domain "$P")
		ip netns exec "$B" taskset -c 0 "$SIPLOAD" --role uas --scenario call --uas-listen "$U:$UPORT" \
			--duration 7200s --quiet "${extra[@]}" >"$OUT/uas-$1.log" 2>&1 &
	fi
	UAS=$!
	PIDS+=("$UAS")
	sleep 0.5
	# the UAS's own registrations, at REG_RATE
	[[ "$SHAPE" == registrar ]] && sleep "$((USERS / REG_RATE + 2))"
	return 0
}
watch_uac() { # the UAC's CPU, sampled until it exits (its /proc entry goes with it)
	UC=0
	local c
	while kill -0 "$UAC" 2>/dev/null; do
		c="$(ticks "$UAC")"
		[[ -n "$c" && "$c" -gt "$UC" ]] && UC="$c"
		sleep 0.2
	done
	wait "$UAC" || true
}
uac_run() {
	local name="$1" round="$2" count="$3" rate="$4" scenario="${5:-call}" dir
	ACH=-
	if [[ "$LOAD" == sipp ]]; then
		dir="$OUT/sipp-$name-$round-$rate"
		mkdir -p "$dir"
		(cd "$dir" && exec ip netns exec "$B" taskset -c 0 sipp "${SIPP_UAC[@]}" -s uas -i "$U" -p "$((UPORT + 10))" \
			-r "$rate" -m "$count" -nostdin -buff_size 4194304 -timeout "$((count / rate * 3 + 30))" -timeout_error \
			-trace_stat -stf stat.csv -trace_rtt -rtt_freq 1000 "$TARGET") >"$dir/uac.log" 2>&1 &
		UAC=$!
		watch_uac
		OK="$(awk -F';' 'NR == 1 { for (i = 1; i <= NF; i++) h[$i] = i; next } { l = $0 }
			END { split(l, v, ";"); print v[h["SuccessfulCall(C)"]] + 0 }' "$dir/stat.csv" 2>/dev/null || echo 0)"
		read -r P50 P99 < <(find "$dir" -name '*_rtt.csv' -exec awk -F';' 'FNR > 1 && ($3 == "setup" || $3 == "1") { print $2 }' {} + | sort -g |
			awk '{ a[NR] = $1 } END { if (NR == 0) { print "- -"; exit } i50 = int(NR * 0.50 + 0.5); i99 = int(NR * 0.99 + 0.5);
				if (i50 < 1) i50 = 1; if (i99 < 1) i99 = 1; print a[i50], a[i99] }') || true
	else
		local json="$OUT/$name-$round-$rate.json"
		local extra=("${UAC_EXTRA[@]}")
		# REGISTER load: its own users (reg0..); the UAS registered user0..
		[[ "$scenario" == register ]] && extra+=(--user-prefix reg --max-inflight 50000)
		ip netns exec "$B" taskset -c 0 timeout $((count / rate * 3 + 30)) "$SIPLOAD" --role uac --scenario "$scenario" --target "$TARGET" \
			--request-uri "$RURI" --rate "$rate" --count "$count" --duration "$((count / rate + 1))s" --json --quiet "${extra[@]}" \
			>"$json" 2>"${json%.json}.err" &
		UAC=$!
		watch_uac
		OK="$(jq -r '(.uac // .) | (.succeeded // .successes // 0)' "$json" 2>/dev/null || echo 0)"
		ACH="$(jq -r '((.uac // .).succeeded // 0) / (.elapsed_s // 1) | floor' "$json" 2>/dev/null || echo -)"
		local k=call_setup
		[[ "$scenario" == register ]] && k=register
		P50="$(jq -r "(.uac // .).latency_us.$k.p50 // 0 | . / 1000" "$json" 2>/dev/null || echo -)"
		P99="$(jq -r "(.uac // .).latency_us.$k.p99 // 0 | . / 1000" "$json" 2>/dev/null || echo -)"
	fi
}
measured() { # measured LABEL ROUND COUNT RATE SCENARIO: one timed load, one table row
	local label="$1" round="$2" count="$3" rate="$4" scenario="$5"
	local k0 u0 s0 k1 u1 s1 ok p50 p99 uc proxy_us all_us soft_us
	k0="$(ticks $PROXY)" u0="$(ticks "$UAS")" s0="$(ticks $(softirqd))"
	uac_run "${label//\//-}" "$round" "$count" "$rate" "$scenario"
	k1="$(ticks $PROXY)" u1="$(ticks "$UAS")" s1="$(ticks $(softirqd))"
	ok="$OK" p50="$P50" p99="$P99" uc="$UC"
	proxy_us="$(awk -v t=$((k1 - k0)) -v n="$ok" -v hz="$CLK_TCK" 'BEGIN { if (n > 0) printf "%.1f", t / hz * 1e6 / n; else print "-" }')"
	all_us="$(awk -v t=$((k1 - k0 + u1 - u0 + s1 - s0 + uc)) -v n="$ok" -v hz="$CLK_TCK" 'BEGIN { if (n > 0) printf "%.1f", t / hz * 1e6 / n; else print "-" }')"
	soft_us="$(awk -v t=$((s1 - s0)) -v n="$ok" -v hz="$CLK_TCK" 'BEGIN { if (n > 0) printf "%.1f", t / hz * 1e6 / n; else print "-" }')"
	printf "%-17s %8s %8s %8s %10s %10s %10s %9s %9s\n" "$label" "$rate" "$ACH" "$ok/$count" "$proxy_us" "$all_us" "$soft_us" "$p50" "$p99" | tee -a "$OUT/table.txt"
}

printf "%-17s %8s %8s %8s %10s %10s %10s %9s %9s\n" proxy rate "done/s" calls "proxy µs" "all µs" "ksoftirq" "p50 ms" "p99 ms" | tee "$OUT/table.txt"
IFS=, read -r -a LIST <<<"$PROXIES"
for round in $(seq "$REPEAT"); do
	for name in "${LIST[@]}"; do
		start_proxy "$name" || continue
		uas_start "$name-$round"
		if [[ "$SHAPE" == registrar ]]; then
			for phase in reg-add reg-refresh; do
				measured "$name/$phase" "$round" "$USERS" "$REG_RATE" register
			done
		fi
		# warm-up
		uac_run "$name" "$round-warm" 2000 1000
		measured "$name" "$round" $((RATE * DURATION)) "$RATE" call
		kill "$UAS" 2>/dev/null || true
		wait "$UAS" 2>/dev/null || true
		[[ -n "$PROXY" ]] || continue
		kill -INT "$PROXY" 2>/dev/null || true
		wait "$PROXY" 2>/dev/null || true
		[[ "$name" == floor* ]] && echo "          $(grep -h 'floor mode' "$OUT/$name.log" | tail -1)" | tee -a "$OUT/table.txt"
		sleep 0.5
	done
done
echo "results: $OUT"
