#!/usr/bin/env bash
# benches/e2e/presence.sh: SIMPLE presence, sipedge vs Kamailio (presence + presence_xml),
# on this machine, in one run: NOTIFY fan-out, PUBLISH/s, memory per subscription and
# per presentity.
#
# Usage: benches/e2e/presence.sh [options]
#   --servers LIST         comma list of kamailio,sipedge (default both)
#   --tests LIST           comma list of fanout,publish,memsub,mempres (default all)
#   --watchers N           fan-out: watchers of one presentity (default 10000)
#   --publish-count N      PUBLISH/s: presentities published, then modified once each (default 100000)
#   --publish-rate R       PUBLISH/s offered in the PUBLISH/s test (default 10000)
#   --mem-counts "A B"     memory: subscriptions and presentities held (default "100000 1000000")
#   --mem-presentities N   memory per subscription: the subscriptions are spread over N
#                          presentities (default 10000: 10 and 100 watchers each)
#   --setup-rate R         SUBSCRIBE/PUBLISH rate while a population is built (default 10000)
#   --mem-settle S         memory: seconds from a population's last answer to the sample
#                          (default 40: past Timer J, 32 s, so the server transactions that
#                          answer retransmitted SUBSCRIBEs/PUBLISHes are gone too; 6 = the
#                          earlier protocol, with only the initial NOTIFYs' transactions gone)
#   --rounds N             rounds; the servers take turns in each (default 3); the table
#                          shows medians
#   --port P               server UDP port (default 17060)
#   --proxy-cpu C --lg-cpu C   CPUs of the server and of the load (default 1, 0)
#   --nice N               nice level of server and load (default -10; 0 = off)
#   --kam-shm MB           Kamailio shared memory, -m (default 8192; 1,000,000 subscriptions
#                          need several GiB)
#   --kam-children N       Kamailio UDP workers, -n, all on --proxy-cpu (default 4: while
#                          one worker sends a fan-out, the others drain the socket of the
#                          200s; with -n 1 they overflow its 4 MiB buffer)
#   --no-build             do not run cargo build
#   -h | --help
#
# Servers: sipedge (`run --shards 1 --domain 127.0.0.1`, [presence] in a generated TOML:
# notify_interval_ms = 0, offline_when_unregistered = false, limits above the counts) or Kamailio 5.6 (kamailio/kam_presence.cfg: presence with
# subs_db_mode=0 and publ_cache=2, presence_xml with force_active=1: no database at all;
# -DD -E -n 1 -x tlsf -X tlsf -A BIGBUF, -m --kam-shm), each pinned to --proxy-cpu, every
# process of it counted. The load is tools/sipload (--scenario subscribe / publish) pinned
# to --lg-cpu. Each measurement starts a fresh server.
#
# fanout: --watchers SUBSCRIBEs to pres0 (each its own dialog, one UDP socket), every
#   initial NOTIFY answered; 2 s of quiet; then one PUBLISH for pres0 (a second sipload).
#   The watchers count the NOTIFYs beyond each subscription's first and exit when all
#   arrived. NOTIFY/s per core = watchers / the server's CPU time from just before the
#   PUBLISH to the last NOTIFY (utime+stime of every thread of every process, from
#   /proc/*/task/*/schedstat, in ns; its idle CPU over the same time, measured for 1 s
#   before, subtracted); NOTIFY/s wall = (watchers - 1) / (last - first NOTIFY arrival);
#   time to the last NOTIFY = its arrival - the PUBLISH's send time (both processes'
#   clocks are the same CLOCK_REALTIME). Also recorded: the server's CPU over the next 5 s
#   (transaction clean-up), NOTIFY retransmissions the watchers saw, UDP drops.
# publish: --publish-count initial PUBLISHes (one per presentity) at --publish-rate, then
#   a second run modifying each once (SIP-If-Match, the entity-tags handed over in a
#   file); µs of server CPU per PUBLISH (new / modify), PUBLISH/s per core = 1e6 / µs,
#   p50 / p99 latency, failures.
# memsub: in one server, subscriptions up to each of --mem-counts in turn (a watcher
#   process per step adds the difference: watcher i to presentity i mod --mem-presentities,
#   at --setup-rate), all held; --mem-settle s after the last was established (the
#   transactions of the build-up gone) the PSS of all the server's processes (/proc/PID/smaps_rollup;
#   shared memory counted once) minus its PSS before any load, ÷ subscriptions held; and
#   the marginal figure from the previous count (what the transient transactions of the
#   build-up leave in the high-water mark cancels out). Kamailio: also its shm "used"
#   (kamcmd core.shmmem: bytes allocated, not pages touched) delta.
# mempres: likewise for presentities, each published once (initial PUBLISH; names
#   p1-0.., p2-0.. per step).
# Results: results/presence-<stamp>/{runs.tsv,table.txt,*.json,*.log}; every process
# started is stopped on exit (trap). Loopback only; every load bounded in count and time.
set -euo pipefail
ulimit -c 0
{
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
SERVERS="kamailio,sipedge" TESTS="fanout,publish,memsub,mempres" WATCHERS=10000
PUB_COUNT=100000 PUB_RATE=10000 MEM_COUNTS="100000 1000000" MEM_PRES=10000 SETUP_RATE=10000
MEM_SETTLE=40 ROUNDS=3 PORT=17060 PROXY_CPU=1 LG_CPU=0 NICE=-10 KAM_SHM=8192 KAM_CHILDREN=4 BUILD=1
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "presence.sh: $*" >&2; exit 2; }
while (($#)); do
	case "$1" in
	--servers) SERVERS="$2"; shift ;;
	--tests) TESTS="$2"; shift ;;
	--watchers) WATCHERS="$2"; shift ;;
	--publish-count) PUB_COUNT="$2"; shift ;;
	--publish-rate) PUB_RATE="$2"; shift ;;
	--mem-counts) MEM_COUNTS="$2"; shift ;;
	--mem-presentities) MEM_PRES="$2"; shift ;;
	--mem-settle) MEM_SETTLE="$2"; shift ;;
	--setup-rate) SETUP_RATE="$2"; shift ;;
	--rounds) ROUNDS="$2"; shift ;;
	--port) PORT="$2"; shift ;;
	--proxy-cpu) PROXY_CPU="$2"; shift ;;
	--lg-cpu) LG_CPU="$2"; shift ;;
	--nice) NICE="$2"; shift ;;
	--kam-shm) KAM_SHM="$2"; shift ;;
	--kam-children) KAM_CHILDREN="$2"; shift ;;
	--no-build) BUILD=0 ;;
	-h | --help) usage; exit 0 ;;
	*) die "unknown option $1 (see --help)" ;;
	esac
	shift
done
STAMP="$(date +%Y%m%d-%H%M%S)"
OUT="$HERE/results/presence-$STAMP"
mkdir -p "$OUT"
ln -sfn "$(basename "$OUT")" "$HERE/results/latest-presence"
log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
has() { [[ ",$1," == *",$2,"* ]]; }

PIDS=()
cleanup() {
	local p
	for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
	sleep 0.3
	for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM
stop_pid() {
	local pid="$1" keep=() p
	[[ -n "$pid" ]] || return 0
	kill -TERM "$pid" 2>/dev/null || true
	for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
	kill -KILL "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
	for p in "${PIDS[@]}"; do [[ "$p" == "$pid" ]] || keep+=("$p"); done
	PIDS=("${keep[@]}")
}
pin() { local set="$1"; shift; if ((NICE != 0)); then exec nice -n "$NICE" taskset -c "$set" "$@"; else exec taskset -c "$set" "$@"; fi; }
tree_pids() { local p c; echo "$1"; for p in $(ps -o pid= --ppid "$1" 2>/dev/null); do for c in $(tree_pids "$p"); do echo "$c"; done; done; }
# cpu_ns PID: CPU time of every thread of PID and its descendants, ns (schedstat)
cpu_ns() {
	local total=0 p t v
	for p in $(tree_pids "$1"); do
		for t in /proc/"$p"/task/*/schedstat; do
			read -r v _ <"$t" 2>/dev/null || continue
			total=$((total + v))
		done
	done
	echo "$total"
}
# pss_kib PID: PSS of PID and its descendants, KiB (shared pages counted once in the sum)
pss_kib() {
	local total=0 p v
	for p in $(tree_pids "$1"); do
		v="$(awk '/^Pss:/ { print $2; exit }' "/proc/$p/smaps_rollup" 2>/dev/null)" || v=0
		total=$((total + ${v:-0}))
	done
	echo "$total"
}
now_us() { date +%s%6N; }
calc() { awk "BEGIN { printf \"%s\", $* }"; }
median() { tr ' ' '\n' | { grep -E '^-?[0-9.]+$' || true; } | sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print a[(NR + 1) / 2]; else printf "%.4g\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
udp_listening() { ss -Hlun "sport = :$1" 2>/dev/null | grep -q .; }
udp_drops() { awk -v a="$(printf '%04X' "$1")" 'NR > 1 { split($2, l, ":"); if (l[2] == a) d += $NF } END { print d + 0 }' /proc/net/udp; }
jget() { python3 -c "import json,sys
try:
    r=json.load(open(sys.argv[1])); v=eval(sys.argv[2]); print('-' if v is None else v)
except Exception: print('-')" "$@"; }

SIPEDGE="$ROOT/target/release/sipedge" SIPLOAD="$ROOT/target/release/sipload"
if ((BUILD)); then
	log "cargo build --release (sipedge, sipload)"
	(cd "$ROOT" && nice -n 10 cargo build --release -p sipedge -p sipload) >"$OUT/cargo-build.log" 2>&1 || die "build failed ($OUT/cargo-build.log)"
fi
[[ -x "$SIPLOAD" ]] || die "need $SIPLOAD (cargo build --release -p sipload)"
cp "$SIPLOAD" "$OUT/sipload" && SIPLOAD="$OUT/sipload"
if [[ -x "$SIPEDGE" ]]; then cp "$SIPEDGE" "$OUT/sipedge" && SIPEDGE="$OUT/sipedge"; fi
REV="$(cd "$ROOT" && git describe --always --dirty 2>/dev/null || echo '?')"
if has "$SERVERS" kamailio; then
	command -v kamailio >/dev/null || die "kamailio not installed (apt-get install kamailio kamailio-presence-modules)"
	KAM_MPATH="$(dirname "$(find /usr/lib /usr/local/lib /usr/lib64 -path '*kamailio/modules/presence.so' 2>/dev/null | head -1)")"
	[[ "$KAM_MPATH" != . ]] || die "Kamailio's presence module is missing (apt-get install kamailio-presence-modules)"
	KAM_CTL="$OUT/kam-ctl"
	sed -e "s#^mpath=.*#mpath=\"$KAM_MPATH/\"#" -e "s#unix:/tmp/kamailio_ctl#unix:$KAM_CTL#" \
		-e "s/127\.0\.0\.1:15060/127.0.0.1:$PORT/g" "$HERE/kamailio/kam_common.inc" >"$OUT/kam_common.inc"
	sed -e "s/127\.0\.0\.1:15060/127.0.0.1:$PORT/g" "$HERE/kamailio/kam_presence.cfg" >"$OUT/kam_presence.cfg"
fi
MAXSUB=2000000
for c in $MEM_COUNTS; do ((c * 2 > MAXSUB)) && MAXSUB=$((c * 2)); done
cat >"$OUT/sipedge.toml" <<EOF
[presence]
min_expires = 60
max_expires = 3600
max_watchers = 100000
max_subscriptions = $MAXSUB
max_presentities = $MAXSUB
notify_interval_ms = 0
# Kamailio has no such notion: a PUBLISH is what watchers see, registered or not
offline_when_unregistered = false
EOF
kam_shm_used() { kamcmd -s "unix:$KAM_CTL" core.shmmem 2>/dev/null | awk '$1 == "used:" { print $2; exit }' || echo 0; }

SRV_PID=""
start_server() { # start_server NAME TAG
	local name="$1" tag="$2"
	udp_listening "$PORT" && die "UDP port $PORT is in use"
	case "$name" in
	kamailio)
		(cd "$OUT" && pin "$PROXY_CPU" kamailio -f "$OUT/kam_presence.cfg" -DD -E -m "$KAM_SHM" -M 64 -n "$KAM_CHILDREN" -x tlsf -X tlsf -A BIGBUF) >"$OUT/kamailio-$tag.log" 2>&1 &
		;;
	sipedge)
		[[ -x "$SIPEDGE" ]] || { log "no sipedge binary"; return 1; }
		rm -rf "$OUT/sipedge-data"
		local a=(run --shards 1 --listen "udp:127.0.0.1:$PORT" --domain 127.0.0.1 --config "$OUT/sipedge.toml" --data-dir "$OUT/sipedge-data")
		echo "$SIPEDGE ${a[*]}" >"$OUT/sipedge.cmd"
		(pin "$PROXY_CPU" "$SIPEDGE" "${a[@]}") >"$OUT/sipedge-$tag.log" 2>&1 &
		;;
	esac
	SRV_PID=$!
	PIDS+=("$SRV_PID")
	for _ in $(seq 100); do udp_listening "$PORT" && break; kill -0 "$SRV_PID" 2>/dev/null || break; sleep 0.1; done
	udp_listening "$PORT" || { log "$name did not come up (see $OUT/$name-$tag.log)"; stop_pid "$SRV_PID"; return 1; }
	sleep 1
}
stop_server() { stop_pid "$SRV_PID"; SRV_PID=""; rm -rf "$OUT/sipedge-data"; }
busy_ticks() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat; }
CLK_TCK="$(getconf CLK_TCK)"
# quiet_wait: up to 15 s for the machine to be idle (other work < 0.3 core over 1 s);
# logs the cores other work used in the last second either way
quiet_wait() {
	local b0 b1 busy i
	for i in $(seq 15); do
		b0="$(busy_ticks)"; sleep 1; b1="$(busy_ticks)"
		busy="$(calc "($b1 - $b0) / $CLK_TCK")"
		awk -v b="$busy" 'BEGIN { exit !(b < 0.3) }' && return 0
	done
	log "machine busy: $busy cores used by other work"
}
WATCH_PID=""
start_watchers() { # start_watchers TAG COUNT PRESENTITIES [sipload args...]: returns once all answered
	local tag="$1" n="$2" p="$3"
	shift 3
	local limit=$((n / SETUP_RATE + 600))
	(pin "$LG_CPU" timeout "$limit" "$SIPLOAD" --role uac --scenario subscribe --target "127.0.0.1:$PORT" --domain 127.0.0.1 \
		--users "$n" --count "$n" --presentities "$p" --rate "$SETUP_RATE" --duration "$((n / SETUP_RATE + 30))s" \
		--max-inflight 5000 --json "$@") \
		>"$OUT/watchers-$tag.json" 2>"$OUT/watchers-$tag.log" &
	WATCH_PID=$!
	PIDS+=("$WATCH_PID")
	local deadline=$((SECONDS + n / SETUP_RATE * 3 + 60))
	until grep -q 'subscriptions established' "$OUT/watchers-$tag.log" 2>/dev/null; do
		kill -0 "$WATCH_PID" 2>/dev/null || { log "watchers exited early ($OUT/watchers-$tag.log)"; return 1; }
		((SECONDS < deadline)) || { log "watchers: not established in time"; return 1; }
		sleep 0.2
	done
}
# notify_counts TAG: "initial updates" from the watchers' last progress line
notify_counts() { sed -n 's/.*notify \([0-9]*\) + \([0-9]*\).*/\1 \2/p' "$OUT/watchers-$1.log" | tail -1; }
wait_initial() { # wait_initial TAG N: until N initial NOTIFYs arrived (at most 60 s)
	local i u deadline=$((SECONDS + 60))
	while ((SECONDS < deadline)); do
		read -r i u < <(notify_counts "$1") || true
		((${i:-0} >= $2)) && return 0
		sleep 0.5
	done
	log "watchers $1: ${i:-0} of $2 initial NOTIFYs"
	return 1
}

RUNS="$OUT/runs.tsv"
printf 'round\ttest\tserver\tcount\tmetric\tvalue\n' >"$RUNS"
rec() { printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$RUNS"; log "round $1 $2 $3 n=$4: $5 = $6"; }

fanout() { # fanout SERVER ROUND
	local s="$1" r="$2" tag="$1-fanout-$2"
	quiet_wait
	start_server "$s" "$tag" || return 0
	if ! start_watchers "$tag" "$WATCHERS" 1 --hold 300s --expect-notifies "$WATCHERS" || ! wait_initial "$tag" "$WATCHERS"; then
		stop_pid "$WATCH_PID"; stop_server; return 0
	fi
	sleep 2
	quiet_wait
	local i0 i1 c0 c1 c2 t0 t1 d0 d1 idle_ns b0 b1
	i0="$(cpu_ns "$SRV_PID")"; sleep 1; i1="$(cpu_ns "$SRV_PID")"
	idle_ns=$((i1 - i0))
	d0="$(udp_drops "$PORT")"
	c0="$(cpu_ns "$SRV_PID")" t0="$(now_us)" b0="$(busy_ticks)"
	(pin "$LG_CPU" timeout 30 "$SIPLOAD" --role uac --scenario publish --target "127.0.0.1:$PORT" --domain 127.0.0.1 \
		--presentities 1 --count 1 --rate 10 --json) >"$OUT/publish-$tag.json" 2>"$OUT/publish-$tag.log" || true
	local deadline=$((SECONDS + 60))
	while kill -0 "$WATCH_PID" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.02; done
	c1="$(cpu_ns "$SRV_PID")" t1="$(now_us)" b1="$(busy_ticks)"
	d1="$(udp_drops "$PORT")"
	stop_pid "$WATCH_PID"
	sleep 5
	c2="$(cpu_ns "$SRV_PID")"
	local w="$OUT/watchers-$tag.json" p="$OUT/publish-$tag.json"
	local got sent first last rate retr
	got="$(jget "$w" "r['uac']['notify']['updates']")"
	sent="$(jget "$p" "r['uac']['first_start_unix_us']")"
	first="$(jget "$w" "r['uac']['notify']['first_update_unix_us']")"
	last="$(jget "$w" "r['uac']['notify']['last_update_unix_us']")"
	rate="$(jget "$w" "r['uac']['notify']['update_rate']")"
	retr="$(jget "$w" "r['uac']['notify']['retransmissions']")"
	local cpu_ns_used=$(((c1 - c0) - idle_ns * (t1 - t0) / 1000000))
	rec "$r" fanout "$s" "$WATCHERS" notifies_received "$got"
	if [[ "$got" != - && "$got" -gt 0 && "$sent" != - && "$last" != - ]]; then
		rec "$r" fanout "$s" "$WATCHERS" notify_per_core_s "$(calc "int($got / ($cpu_ns_used / 1e9))")"
		rec "$r" fanout "$s" "$WATCHERS" cpu_ms "$(calc "$cpu_ns_used / 1e6")"
		rec "$r" fanout "$s" "$WATCHERS" notify_per_s_wall "$rate"
		rec "$r" fanout "$s" "$WATCHERS" ms_to_first_notify "$(calc "($first - $sent) / 1000")"
		rec "$r" fanout "$s" "$WATCHERS" ms_to_last_notify "$(calc "($last - $sent) / 1000")"
		rec "$r" fanout "$s" "$WATCHERS" cleanup_cpu_ms_5s "$(calc "(($c2 - $c1) - $idle_ns * 5) / 1e6")"
		rec "$r" fanout "$s" "$WATCHERS" notify_retransmissions "$retr"
		rec "$r" fanout "$s" "$WATCHERS" server_udp_drops "$((d1 - d0))"
		# all cores busy over the window minus the server's CPU: the load and other work
		rec "$r" fanout "$s" "$WATCHERS" other_cores "$(calc "(($b1 - $b0) / $CLK_TCK - ($c1 - $c0) / 1e9) / (($t1 - $t0) / 1e6)")"
	else
		log "fanout $s round $r: no NOTIFY fan-out measured (watchers: $got updates; see $w)"
	fi
	stop_server
}

publish() { # publish SERVER ROUND
	local s="$1" r="$2" tag="$1-publish-$2" phase c0 c1 n ok failed f
	quiet_wait
	start_server "$s" "$tag" || return 0
	for phase in new modify; do
		f="$OUT/pub-$tag-$phase.json"
		local etags=(--etags-out "$OUT/etags-$tag")
		[[ "$phase" == modify ]] && etags=(--etags-in "$OUT/etags-$tag" --etags-out "$OUT/etags-$tag.2")
		c0="$(cpu_ns "$SRV_PID")"
		(pin "$LG_CPU" timeout $((PUB_COUNT / PUB_RATE * 3 + 60)) "$SIPLOAD" --role uac --scenario publish --target "127.0.0.1:$PORT" \
			--domain 127.0.0.1 --presentities "$PUB_COUNT" --count "$PUB_COUNT" --rate "$PUB_RATE" --duration "$((PUB_COUNT / PUB_RATE + 2))s" \
			--json --quiet "${etags[@]}") >"$f" 2>"$f.log" || true
		c1="$(cpu_ns "$SRV_PID")"
		ok="$(jget "$f" "r['uac']['succeeded']")"
		failed="$(jget "$f" "r['uac']['failed']")"
		local kind=publish
		[[ "$phase" == modify ]] && kind=publish_modify
		rec "$r" "publish-$phase" "$s" "$PUB_COUNT" ok "$ok"
		rec "$r" "publish-$phase" "$s" "$PUB_COUNT" failed "$failed"
		if [[ "$ok" != - && "$ok" -gt 0 ]]; then
			rec "$r" "publish-$phase" "$s" "$PUB_COUNT" us_per_publish "$(calc "($c1 - $c0) / 1000 / $ok")"
			rec "$r" "publish-$phase" "$s" "$PUB_COUNT" publish_per_core_s "$(calc "int($ok / (($c1 - $c0) / 1e9))")"
			rec "$r" "publish-$phase" "$s" "$PUB_COUNT" achieved_rate "$(jget "$f" "r['uac']['achieved_rate']")"
			rec "$r" "publish-$phase" "$s" "$PUB_COUNT" p50_us "$(jget "$f" "r['uac']['latency_us']['$kind']['p50']")"
			rec "$r" "publish-$phase" "$s" "$PUB_COUNT" p99_us "$(jget "$f" "r['uac']['latency_us']['$kind']['p99']")"
		fi
		[[ "$phase" == new && ( "$ok" == - || "$ok" -eq 0 ) ]] && break
	done
	stop_server
}

memsub() { # memsub SERVER ROUND: the --mem-counts populations, one after the other, in one server
	local s="$1" r="$2" tag="$1-memsub-$2" m0 m1 k0 k1 got c have=0 prev_m prev_n=0 step=0 pids=()
	quiet_wait
	start_server "$s" "$tag" || return 0
	m0="$(pss_kib "$SRV_PID")" prev_m="$m0"
	[[ "$s" == kamailio ]] && k0="$(kam_shm_used)"
	for c in $MEM_COUNTS; do
		step=$((step + 1))
		# one more watcher process adds the subscriptions up to c (its user names differ)
		if ! start_watchers "$tag-$c" $((c - have)) "$MEM_PRES" --hold 1800s --user-prefix "w$step-"; then
			stop_pid "$WATCH_PID"
			break
		fi
		pids+=("$WATCH_PID")
		wait_initial "$tag-$c" $((c - have)) || true
		sleep "$MEM_SETTLE" # the initial NOTIFYs' client transactions end (Timer K, 5 s), the SUBSCRIBEs' (Timer J, 32 s)
		m1="$(pss_kib "$SRV_PID")"
		read -r got _ < <(notify_counts "$tag-$c") || true
		have="$c"
		rec "$r" memsub "$s" "$c" pss_delta_kib "$((m1 - m0))"
		rec "$r" memsub "$s" "$c" bytes_per_subscription "$(calc "int(($m1 - $m0) * 1024 / $c)")"
		((prev_n > 0)) && rec "$r" memsub "$s" "$c" bytes_per_subscription_marginal "$(calc "int(($m1 - $prev_m) * 1024 / ($c - $prev_n))")"
		rec "$r" memsub "$s" "$c" initial_notifies "${got:-0}"
		if [[ "$s" == kamailio ]]; then
			k1="$(kam_shm_used)"
			rec "$r" memsub "$s" "$c" shm_used_bytes_per_subscription "$(calc "int((${k1:-0} - ${k0:-0}) / $c)")"
		fi
		prev_m="$m1" prev_n="$c"
	done
	for p in "${pids[@]}"; do stop_pid "$p"; done
	stop_server
}

mempres() { # mempres SERVER ROUND: the --mem-counts presentities published, one population after the other
	local s="$1" r="$2" tag="$1-mempres-$2" m0 m1 k0 k1 ok f c have=0 prev_m prev_n=0 step=0 total=0
	quiet_wait
	start_server "$s" "$tag" || return 0
	m0="$(pss_kib "$SRV_PID")" prev_m="$m0"
	[[ "$s" == kamailio ]] && k0="$(kam_shm_used)"
	for c in $MEM_COUNTS; do
		step=$((step + 1))
		local n=$((c - have))
		f="$OUT/mempres-$tag-$c.json"
		(pin "$LG_CPU" timeout $((n / SETUP_RATE * 3 + 60)) "$SIPLOAD" --role uac --scenario publish --target "127.0.0.1:$PORT" \
			--domain 127.0.0.1 --presentities "$n" --presentity-prefix "p$step-" --count "$n" --rate "$SETUP_RATE" \
			--duration "$((n / SETUP_RATE + 2))s" --json --quiet) >"$f" 2>"$f.log" || true
		sleep "$MEM_SETTLE"
		m1="$(pss_kib "$SRV_PID")"
		ok="$(jget "$f" "r['uac']['succeeded']")"
		[[ "$ok" != - ]] || ok=0
		total=$((total + ok)) have="$c"
		rec "$r" mempres "$s" "$c" published "$total"
		((total > 0)) || break
		rec "$r" mempres "$s" "$c" pss_delta_kib "$((m1 - m0))"
		rec "$r" mempres "$s" "$c" bytes_per_presentity "$(calc "int(($m1 - $m0) * 1024 / $total)")"
		((prev_n > 0 && ok > 0)) && rec "$r" mempres "$s" "$c" bytes_per_presentity_marginal "$(calc "int(($m1 - $prev_m) * 1024 / $ok)")"
		if [[ "$s" == kamailio ]]; then
			k1="$(kam_shm_used)"
			rec "$r" mempres "$s" "$c" shm_used_bytes_per_presentity "$(calc "int((${k1:-0} - ${k0:-0}) / $total)")"
		fi
		prev_m="$m1" prev_n="$total"
	done
	stop_server
}

log "output in $OUT (sipedge tree $REV; $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg); $(kamailio -v 2>/dev/null | head -1))"
IFS=',' read -r -a SERVER_LIST <<<"$SERVERS"
for ((r = 1; r <= ROUNDS; r++)); do
	for s in "${SERVER_LIST[@]}"; do
		has "$TESTS" fanout && fanout "$s" "$r"
		has "$TESTS" publish && publish "$s" "$r"
		has "$TESTS" memsub && memsub "$s" "$r"
		has "$TESTS" mempres && mempres "$s" "$r"
		true
	done
done

# ---------------------------------------------------------------- table
val() { # val TEST SERVER COUNT METRIC: median over rounds
	awk -F'\t' -v t="$1" -v s="$2" -v n="$3" -v m="$4" 'NR > 1 && $2 == t && $3 == s && $4 == n && $5 == m { print $6 }' "$RUNS" | tr '\n' ' ' | median
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a + 0 > 0 && b + 0 > 0) printf "%.2f", a / b; else printf "-" }'; }
{
	echo "SIMPLE presence, sipedge vs Kamailio $(kamailio -v 2>/dev/null | head -1 | awk '{ print $2, $3 }') presence+presence_xml (memory only), medians of $ROUNDS rounds"
	echo "(sipedge tree $REV, $(date -u +%FT%TZ), server pinned to CPU $PROXY_CPU, sipload to CPU $LG_CPU; runs: $RUNS)"
	printf '\n%-52s %14s %14s %10s  %s\n' measurement kamailio sipedge sip/kam goal
	row() { # row LABEL TEST COUNT METRIC [GOAL]
		local k e
		k="$(val "$2" kamailio "$3" "$4")" e="$(val "$2" sipedge "$3" "$4")"
		printf '%-52s %14s %14s %10s  %s\n' "$1" "$k" "$e" "$(ratio "$e" "$k")" "${5:-}"
	}
	if has "$TESTS" fanout; then
		row "fan-out $WATCHERS: NOTIFY/s per core (server CPU)" fanout "$WATCHERS" notify_per_core_s ">= 50,000 and >= 3x Kamailio"
		row "fan-out: NOTIFY/s arriving (first to last)" fanout "$WATCHERS" notify_per_s_wall
		row "fan-out: PUBLISH sent -> first NOTIFY, ms" fanout "$WATCHERS" ms_to_first_notify
		row "fan-out: PUBLISH sent -> last NOTIFY, ms" fanout "$WATCHERS" ms_to_last_notify
		row "fan-out: server CPU, ms" fanout "$WATCHERS" cpu_ms
		row "fan-out: server CPU in the next 5 s, ms" fanout "$WATCHERS" cleanup_cpu_ms_5s
		row "fan-out: NOTIFYs received twice (retransmitted)" fanout "$WATCHERS" notify_retransmissions
		row "fan-out: server socket UDP drops" fanout "$WATCHERS" server_udp_drops
		row "fan-out: cores used by the load and other work" fanout "$WATCHERS" other_cores
	fi
	if has "$TESTS" publish; then
		for ph in new modify; do
			row "PUBLISH $ph ($PUB_COUNT presentities @${PUB_RATE}/s): us CPU each" "publish-$ph" "$PUB_COUNT" us_per_publish
			row "PUBLISH $ph: PUBLISH/s per core (1e6 / us)" "publish-$ph" "$PUB_COUNT" publish_per_core_s
			row "PUBLISH $ph: achieved rate /s" "publish-$ph" "$PUB_COUNT" achieved_rate
			row "PUBLISH $ph: p50 / p99 latency us" "publish-$ph" "$PUB_COUNT" p50_us
			row "" "publish-$ph" "$PUB_COUNT" p99_us
			row "PUBLISH $ph: failed" "publish-$ph" "$PUB_COUNT" failed
		done
	fi
	for c in $MEM_COUNTS; do
		if has "$TESTS" memsub; then
			row "memory per subscription @$c, bytes (PSS)" memsub "$c" bytes_per_subscription "<= 1024"
			row "  the same, marginal (from the previous count)" memsub "$c" bytes_per_subscription_marginal
			row "  Kamailio shm used per subscription @$c, bytes" memsub "$c" shm_used_bytes_per_subscription
		fi
		if has "$TESTS" mempres; then
			row "memory per presentity @$c, bytes (PSS)" mempres "$c" bytes_per_presentity
			row "  the same, marginal (from the previous count)" mempres "$c" bytes_per_presentity_marginal
			row "  Kamailio shm used per presentity @$c, bytes" mempres "$c" shm_used_bytes_per_presentity
			row "  presentities published @$c" mempres "$c" published
		fi
	done
	fo_e="$(val fanout sipedge "$WATCHERS" notify_per_core_s)"
	fo_k="$(val fanout kamailio "$WATCHERS" notify_per_core_s)"
	echo
	echo "goals: NOTIFY/s per core >= 50,000: sipedge $fo_e; >= 3x Kamailio's: $(ratio "$fo_e" "$fo_k")x"
} | tee "$OUT/table.txt"
exit 0
}
