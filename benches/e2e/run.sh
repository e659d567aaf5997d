#!/usr/bin/env bash
# benches/e2e/run.sh: sipedge and Kamailio side by side, on this machine, in one run.
#
# Usage: benches/e2e/run.sh [options]
#   --shape stateless|stateful|registrar   proxy shape (default stateless)
#   --load sipp|sipload                    load generator (default sipp); sipload is
#                                          skipped with a note when its binary is missing
#   --proxies LIST       comma list of kamailio,sipedge,sipedge2,floor (default: all;
#                        sipedge2 = sipedge --shards 2, floor = tools/floor modes A and B)
#   --quick              smoke check: short runs, one repeat, short rate search
#   --rates "R1 R2"      offered loads for CPU per call (default "4000 5000" calls/s)
#   --duration S         seconds per CPU-per-call run (default 20; quick 3)
#   --repeat N           repeats per rate; the table shows the median (default 3; quick 1)
#   --max-start R --max-step R --max-limit R --step-duration S
#                        rate search for max calls/s (defaults 4000, 2000, 30000, 10 s;
#                        with --load sipload step 4000, limit 80000)
#   --latency-rate R     rate for p50/p99 (default: 50% of Kamailio's max)
#   --skip-max           no rate search (latency then runs at --latency-rate or rates[0]/2)
#   --skip-latency
#   --users N            registrar shape: distinct users (default 100000; quick 5000)
#   --reg-rate R         registrar shape: REGISTER/s offered (default 5000)
#   --no-build           do not run `cargo build --release` for sipedge
#   --sipedge PATH       sipedge binary (default target/release/sipedge)
#   --base PATH          another sipedge binary (an earlier commit's) run as proxy "base",
#                        one shard like "sipedge", in the same rounds: before/after in one run
#   --sipload PATH       sipload binary (default target/release/sipload)
#   --proxy-port P --uas-port P   UDP ports on 127.0.0.1 (default 15060, 15080)
#   --proxy-cpu C --lg-cpu C      CPUs for the proxy and the load generator (default 1, 0)
#   --nice N             run proxy and load generator at this nice level (default -10, so
#                        other work on a shared machine does not starve them; 0 = off)
#   --quiet-wait S       before each run wait up to S s for the machine to be idle (other
#                        processes < 0.25 core); default 10, quick 0; after two waits in a
#                        row that time out it stops waiting (see the "other" column)
#   --net veth           the AF_XDP topology instead: two network namespaces on a veth pair,
#                        Kamailio, sipedge --io uring and --io xdp under sipload
#                        (benches/e2e/xdp.sh; its options: --shape --rate --duration --proxies)
#   -h | --help
# Environment: SIPEDGE_ARGS (extra arguments for `sipedge run`).
#
# What it measures, for each proxy under test (pinned to --proxy-cpu; load generator
# UAC and UAS both pinned to --lg-cpu; loopback only; every run bounded in count and time):
#   a. CPU per call: the proxy is warmed up, then for each rate a UAC run of rate x
#      duration calls; utime+stime of ALL the proxy's processes (/proc/PID/stat of the
#      process and its descendants) is sampled right before and right after the run and
#      divided by the calls completed in it (µs). Median (and min) of --repeat rounds;
#      the proxies take turns round by round so drifting noise falls on all alike.
#   b. max sustained calls/s with < 0.1% failed calls: the rate is stepped up
#      (--max-step) until a step fails (failures >= 0.1%, or the run took > 110% of
#      its nominal time: the offered rate was not carried), then bisected twice.
#      "proxy-bound": the proxy used >= 85% of its CPUs at the best rate; "LG-bound":
#      it did not, so the load generator or the machine set the limit (a lower bound).
#   c. p50/p99 call-setup latency (INVITE -> 200, from the load generator) at 50% of
#      Kamailio's max.
#   d. the floor: tools/floor (a bare UDP forwarder) CPU per datagram x datagrams per call.
#   e. sipedge --shards 2 (pinned to both CPUs; the load generator then shares them).
# Results: a table on stdout (and table.txt), raw runs in runs.tsv and a summary.json in
# benches/e2e/results/<shape>-<load>-<stamp>/ (results/latest points at the last one).
# Exit status: 0 when every proxy run completed its calls, 1 when a proxy failed to
# complete calls (or could not be started), 2 on a usage or setup error.
# shellcheck disable=SC2317 # functions called indirectly (lg_${LOAD}_run, traps)
set -euo pipefail
{ # the whole script is one compound command: bash reads it all before running, so editing it mid-run is safe

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"

# ---------------------------------------------------------------- options
SHAPE=stateless LOAD=sipp PROXIES="kamailio,sipedge,sipedge2,floor" QUICK=0
RATES="4000 5000" DURATION="" MAX_LIMIT_SET=0 MAX_STEP_SET=0 REPEAT="" MAX_START=4000 MAX_STEP=2000 MAX_LIMIT=30000
STEP_DURATION="" LATENCY_RATE="" SKIP_MAX=0 SKIP_LATENCY=0 USERS="" REG_RATE=5000 AUTH=0
BUILD=1 SIPEDGE="$ROOT/target/release/sipedge" SIPLOAD="$ROOT/target/release/sipload"
PROXY_PORT=15060 UAS_PORT=15080 PROXY_CPU=1 LG_CPU=0 NICE=-10 QUIET_WAIT=""

usage() { sed -n '2,/^# shellcheck disable/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
for a in "$@"; do
	if [[ "$a" == veth ]]; then exec "$HERE/xdp.sh" "$@"; fi
done
die() { echo "run.sh: $*" >&2; exit 2; }
while (($#)); do
	case "$1" in
	--shape) SHAPE="$2"; shift ;;
	--load) LOAD="$2"; shift ;;
	--proxies) PROXIES="$2"; shift ;;
	--base) BASE_BIN="$2"; shift ;;
	--quick) QUICK=1 ;;
	--rates) RATES="$2"; shift ;;
	--duration) DURATION="$2"; shift ;;
	--repeat) REPEAT="$2"; shift ;;
	--max-start) MAX_START="$2"; shift ;;
	--max-step) MAX_STEP="$2" MAX_STEP_SET=1; shift ;;
	--max-limit) MAX_LIMIT="$2" MAX_LIMIT_SET=1; shift ;;
	--step-duration) STEP_DURATION="$2"; shift ;;
	--latency-rate) LATENCY_RATE="$2"; shift ;;
	--skip-max) SKIP_MAX=1 ;;
	--skip-latency) SKIP_LATENCY=1 ;;
	--users) USERS="$2"; shift ;;
	--reg-rate) REG_RATE="$2"; shift ;;
	--auth) AUTH=1 ;;
	--no-build) BUILD=0 ;;
	--sipedge) SIPEDGE="$2"; shift ;;
	--sipload) SIPLOAD="$2"; shift ;;
	--proxy-port) PROXY_PORT="$2"; shift ;;
	--uas-port) UAS_PORT="$2"; shift ;;
	--proxy-cpu) PROXY_CPU="$2"; shift ;;
	--lg-cpu) LG_CPU="$2"; shift ;;
	--nice) NICE="$2"; shift ;;
	--quiet-wait) QUIET_WAIT="$2"; shift ;;
	-h | --help) usage; exit 0 ;;
	*) die "unknown option $1 (see --help)" ;;
	esac
	shift
done
case "$SHAPE" in stateless | stateful | registrar) ;; *) die "--shape stateless|stateful|registrar" ;; esac
case "$LOAD" in sipp | sipload) ;; *) die "--load sipp|sipload" ;; esac
if [[ "$LOAD" == sipload ]]; then # it goes much further than SIPp
	((MAX_STEP_SET)) || MAX_STEP=4000
	((MAX_LIMIT_SET)) || MAX_LIMIT=80000
fi
if ((QUICK)); then
	: "${DURATION:=3}" "${REPEAT:=1}" "${STEP_DURATION:=3}" "${USERS:=5000}" "${QUIET_WAIT:=0}"
	((MAX_LIMIT_SET)) || MAX_LIMIT=$((MAX_START + 2 * MAX_STEP))
else
	: "${DURATION:=20}" "${REPEAT:=3}" "${STEP_DURATION:=10}" "${USERS:=100000}" "${QUIET_WAIT:=10}"
fi
WARMUP_S=$((QUICK ? 1 : 3))
read -r -a RATE_LIST <<<"$RATES"
((${#RATE_LIST[@]})) || die "--rates is empty"
BASE_BIN="${BASE_BIN:-}"
if [[ -n "$BASE_BIN" ]]; then PROXIES="$PROXIES,base"; fi
has_proxy() { [[ ",$PROXIES," == *",$1,"* ]]; }
# The floor stands for a stateless relay; the registrar shape has no forwarding floor
# for REGISTER, but its calls still have one.
# datagrams relayed per call: INVITE 180 200 ACK BYE 200; stateful proxies add a 100 Trying.
DGRAMS_PER_CALL=6
[[ "$SHAPE" == stateless ]] || DGRAMS_PER_CALL=7

STAMP="$(date +%Y%m%d-%H%M%S)"
OUT="$HERE/results/$SHAPE-$LOAD-$STAMP"
mkdir -p "$OUT"
ln -sfn "$(basename "$OUT")" "$HERE/results/latest"
RUNS="$OUT/runs.tsv"
printf 'proxy\ttest\toffered_rate\trun\tcalls_ok\tcalls_failed\tretrans\twall_s\tproxy_cpu_s\tcpu_us_per_unit\tproxy_core_use\tlg_cores\tother_cores\tudp_drops_proxy/uas\tp50_ms\tp99_ms\tnote\n' >"$RUNS"
log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# ---------------------------------------------------------------- cleanup
PIDS=()
cleanup() {
	local pid
	for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
	for pid in "${PIDS[@]}"; do
		for _ in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$pid" 2>/dev/null || true
	done
	PIDS=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM
forget_pid() {
	local keep=() p
	for p in "${PIDS[@]}"; do [[ "$p" == "$1" ]] || keep+=("$p"); done
	PIDS=("${keep[@]}")
}
stop_pid() { # stop_pid PID: TERM, wait up to 3 s, KILL
	local pid="$1"
	kill -TERM "$pid" 2>/dev/null || true
	for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
	kill -KILL "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
	forget_pid "$pid"
}

# ---------------------------------------------------------------- setup
APT_UPDATED=0
apt_install() {
	command -v apt-get >/dev/null || die "need $* but apt-get is missing"
	if ((!APT_UPDATED)); then apt-get update -qq >&2; APT_UPDATED=1; fi
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}
command -v kamailio >/dev/null || { log "installing kamailio"; apt_install kamailio; }
command -v sipp >/dev/null || { log "installing sip-tester (sipp)"; apt_install sip-tester; }
command -v gcc >/dev/null || { log "installing gcc"; apt_install gcc libc6-dev; }
command -v taskset >/dev/null || apt_install util-linux
command -v ss >/dev/null || apt_install iproute2
if [[ "$LOAD" == sipload ]] && ! command -v jq >/dev/null; then apt_install jq; fi
NCPU="$(nproc)"
((NCPU >= 2)) || log "warning: $NCPU CPU: proxy and load generator share it"
CLK_TCK="$(getconf CLK_TCK)"

# the floor forwarder
FLOOR="$OUT/floor"
gcc -O2 -Wall -o "$FLOOR" "$ROOT/tools/floor/floor.c"

# Kamailio configs: copied into the run dir with ports, module path and ctl socket fixed
KAM_DIR="$OUT/kamailio"
mkdir -p "$KAM_DIR"
cp "$HERE"/kamailio/*.cfg "$HERE"/kamailio/*.inc "$KAM_DIR/"
KAM_MPATH="$(dirname "$(find /usr/lib /usr/local/lib /usr/lib64 -path '*kamailio/modules/sl.so' 2>/dev/null | head -1)")"
[[ -f "$KAM_MPATH/sl.so" ]] || die "kamailio modules (sl.so) not found"
sed -i -e "s#^mpath=.*#mpath=\"$KAM_MPATH/\"#" -e "s#unix:/tmp/kamailio_ctl#unix:$KAM_DIR/ctl#" "$KAM_DIR/kam_common.inc"
sed -i -e "s/127\.0\.0\.1:15060/127.0.0.1:$PROXY_PORT/g" -e "s/127\.0\.0\.1:15080/127.0.0.1:$UAS_PORT/g" "$KAM_DIR"/*.cfg "$KAM_DIR"/*.inc
case "$SHAPE" in
stateless) KAM_CFG=kam_stateless.cfg ;;
stateful) KAM_CFG=kam_stateful.cfg ;;
registrar) KAM_CFG=kam_registrar.cfg ;;
esac
# --auth (registrar shape): REGISTERs are challenged (digest, password pw-<user>)
if ((AUTH)); then
	[[ "$SHAPE" == registrar ]] || die "--auth goes with --shape registrar"
	KAM_CFG=kam_registrar_auth.cfg
fi

# sipedge
SIPEDGE_STATUS=""
if has_proxy sipedge || has_proxy sipedge2; then
	if ((BUILD)); then
		log "cargo build --release --bin sipedge"
		if ! (cd "$ROOT" && cargo build --release --bin sipedge) >"$OUT/cargo-build.log" 2>&1; then
			SIPEDGE_STATUS="cargo build --release failed (see $OUT/cargo-build.log)"
		fi
	fi
	[[ -n "$SIPEDGE_STATUS" || -x "$SIPEDGE" ]] || SIPEDGE_STATUS="$SIPEDGE not found"
	# a private copy: a rebuild of target/release during the bench must not change what runs
	if [[ -z "$SIPEDGE_STATUS" ]]; then cp "$SIPEDGE" "$OUT/sipedge" && SIPEDGE="$OUT/sipedge"; fi
	if [[ -n "$BASE_BIN" ]]; then
		[[ -x "$BASE_BIN" ]] || die "--base $BASE_BIN: not an executable"
		cp "$BASE_BIN" "$OUT/sipedge-base" && BASE_BIN="$OUT/sipedge-base"
	fi
	SIPEDGE_REV="$(cd "$ROOT" && git describe --always --dirty 2>/dev/null || echo '?')"
fi

# load generator
SIPP_SF_UAC=() SIPP_SF_UAS=() UAC_INF=()
case "$SHAPE" in
stateless) SIPP_SF_UAC=(-sn uac) SIPP_SF_UAS=(-sn uas) ;;
stateful) SIPP_SF_UAC=(-sf "$ROOT/tools/sipp/uac.xml") SIPP_SF_UAS=(-sf "$ROOT/tools/sipp/uas.xml") ;;
registrar)
	SIPP_SF_UAC=(-sf "$ROOT/tools/sipp/uac_users.xml") SIPP_SF_UAS=(-sf "$ROOT/tools/sipp/uas.xml")
	USERS_REG="$OUT/users_seq.csv" USERS_CALL="$OUT/users_random.csv"
	awk -v n="$USERS" -v c="127.0.0.1:$UAS_PORT" 'BEGIN { print "SEQUENTIAL";
		for (i = 0; i < n; i++) { u = sprintf("user%06d", i);
			printf "%s;pw-%s;%s;[authentication username=%s password=pw-%s]\n", u, u, c, u, u } }' >"$USERS_REG"
	sed '1s/.*/RANDOM/' "$USERS_REG" >"$USERS_CALL"
	if ((AUTH)); then
		awk -v n="$USERS" 'BEGIN { for (i = 0; i < n; i++) { u = sprintf("user%06d", i);
			printf "[[user]]\nname = \"%s\"\ndomain = \"127.0.0.1\"\npassword = \"pw-%s\"\n", u, u } }' >"$OUT/sipedge-users.toml"
		# Calls are not authenticated, as in kam_registrar_auth.cfg: the call
		# bench measures routing; REGISTER is what this shape authenticates.
		printf '[auth]\nalgorithms = ["MD5", "SHA-256"]\n\n[[policy.rule]]\nmethod = ["INVITE"]\naction = "allow"\n' >"$OUT/sipedge-auth.toml"
	fi
	UAC_INF=(-inf "$USERS_CALL")
	;;
esac
LOAD_STATUS=""
if [[ "$LOAD" == sipload && ! -x "$SIPLOAD" ]]; then
	LOAD_STATUS="sipload not built ($SIPLOAD missing: cargo build --release -p sipload)"
fi

# ---------------------------------------------------------------- helpers
pin() { # pin CPUSET CMD...: run CMD on CPUSET at nice level NICE
	local set="$1"
	shift
	if ((NICE != 0)); then exec nice -n "$NICE" taskset -c "$set" "$@"; else exec taskset -c "$set" "$@"; fi
}
busy_ticks() { # busy_ticks: non-idle ticks of all CPUs (user nice system irq softirq steal)
	awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat
}
QUIET_MISSES=0
udp_drops() { # udp_drops: "P U", receive-buffer drops of the sockets on the proxy and the UAS port
	awk -v a="$(printf '%04X' "$PROXY_PORT")" -v b="$(printf '%04X' "$UAS_PORT")" 'NR > 1 {
		split($2, l, ":"); if (l[2] == a) p += $NF; if (l[2] == b) u += $NF } END { print p + 0, u + 0 }' /proc/net/udp
}
quiet_wait() { # wait up to QUIET_WAIT s until other processes use < 0.25 core (we are idle now)
	local t b0 b1
	((QUIET_MISSES < 2)) || return 0 # the machine stays busy: stop waiting, the noise column says so
	for ((t = 0; t < QUIET_WAIT; t++)); do
		b0="$(busy_ticks)"
		sleep 1
		b1="$(busy_ticks)"
		if ((b1 - b0 < CLK_TCK / 4)); then QUIET_MISSES=0; return 0; fi
	done
	((QUIET_WAIT == 0)) || { QUIET_MISSES=$((QUIET_MISSES + 1)); log "machine busy (other processes > 0.25 core) after ${QUIET_WAIT}s wait"; }
	return 0
}
calc() { awk "BEGIN { printf \"%s\", $* }"; }
calc_fmt() { awk -v f="$1" -v v="$2" 'BEGIN { if (v == "-") print v; else printf f, v }'; }
port_bound() { # port_bound PORT: a UDP socket is bound to 127.0.0.1:PORT or *:PORT
	ss -Hlun "sport = :$1" 2>/dev/null | grep -q .
}
wait_port() { # wait_port PORT PID: until bound (10 s) while PID lives
	for _ in $(seq 100); do
		port_bound "$1" && return 0
		kill -0 "$2" 2>/dev/null || return 1
		sleep 0.1
	done
	return 1
}
tree_pids() { # tree_pids PID: PID and all its descendants
	local p c
	echo "$1"
	for p in $(ps -o pid= --ppid "$1" 2>/dev/null); do
		for c in $(tree_pids "$p"); do echo "$c"; done
	done
}
cpu_ticks() { # cpu_ticks PID: utime+stime (clock ticks) of PID's whole process tree
	local total=0 p line rest
	for p in $(tree_pids "$1"); do
		line="$(cat "/proc/$p/stat" 2>/dev/null)" || continue
		rest="${line##*) }" # fields from 3 on (comm may contain spaces)
		read -r -a f <<<"$rest"
		total=$((total + f[11] + f[12])) # utime, stime = fields 14, 15
	done
	echo "$total"
}
median() { tr ' ' '\n' | grep -v '^$' | grep -v '^-$' | sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print a[(NR + 1) / 2]; else printf "%.2f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
ensure_ports_free() {
	local p
	for p in "$PROXY_PORT" "$UAS_PORT"; do
		port_bound "$p" && die "UDP port $p is in use (another bench or test?); pick --proxy-port/--uas-port"
	done
	return 0
}

# ---------------------------------------------------------------- proxies
# start_proxy NAME: starts it pinned, sets PROXY_PID; returns 1 when it does not come up
PROXY_PID="" PROXY_CPUSET="" LG_CPUSET=""
start_proxy() {
	local name="$1" logf="$OUT/$1.log"
	PROXY_CPUSET="$PROXY_CPU" LG_CPUSET="$LG_CPU"
	ensure_ports_free
	case "$name" in
	kamailio)
		(cd "$KAM_DIR" && pin "$PROXY_CPUSET" kamailio -f "$KAM_DIR/$KAM_CFG" -DD -E -m 1024 -n 1 -x tlsf -X tlsf -A BIGBUF) >"$logf" 2>&1 &
		;;
	sipedge | sipedge2 | base)
		local shards=1 args=() bin="$SIPEDGE"
		if [[ "$name" == base ]]; then bin="$BASE_BIN"; fi
		if [[ "$name" == sipedge2 ]]; then shards=2 PROXY_CPUSET="0-$((NCPU > 1 ? 1 : 0))" LG_CPUSET="$PROXY_CPUSET"; fi
		args=(run --shards "$shards" --listen "udp:127.0.0.1:$PROXY_PORT")
		case "$SHAPE" in
		stateless) args+=(--stateless --upstream "sip:127.0.0.1:$UAS_PORT") ;;
		stateful) args+=(--upstream "sip:127.0.0.1:$UAS_PORT") ;;
		registrar) args+=(--domain 127.0.0.1) ;;
		esac
		# a fresh binding store per run (the default ./sipedge-data would carry bindings over)
		rm -rf "$OUT/$name-data"
		args+=(--data-dir "$OUT/$name-data")
		if ((AUTH)); then
			# the same users and passwords as Kamailio's auth config; MD5 first: SIPp 3.6 answers
			# only the first challenge and speaks MD5 only
			args+=(--users "$OUT/sipedge-users.toml" --config "$OUT/sipedge-auth.toml")
		fi
		# shellcheck disable=SC2206 # SIPEDGE_ARGS is a word list on purpose
		args+=(${SIPEDGE_ARGS:-})
		echo "$bin ${args[*]}" >"$OUT/$name.cmd"
		(pin "$PROXY_CPUSET" "$bin" "${args[@]}") >"$logf" 2>&1 &
		;;
	floorA) (pin "$PROXY_CPUSET" "$FLOOR" A "$PROXY_PORT" "$UAS_PORT") >"$logf" 2>&1 & ;;
	floorB) (pin "$PROXY_CPUSET" "$FLOOR" B "$PROXY_PORT" "$UAS_PORT" 64 3000) >"$logf" 2>&1 & ;;
	esac
	PROXY_PID=$!
	PIDS+=("$PROXY_PID")
	if ! wait_port "$PROXY_PORT" "$PROXY_PID"; then
		log "$name did not come up; last lines of $logf:"
		tail -5 "$logf" >&2 || true
		stop_pid "$PROXY_PID"
		return 1
	fi
	sleep 0.5 # let Kamailio finish forking its children
	if [[ "$name" == sipedge* || "$name" == base ]]; then
		# Its startup line comes once the store and users file are loaded
		# (the port is bound before), and names the I/O driver and shards.
		local waited=0
		while ! grep -q 'started: ' "$logf" && ((waited < 600)) && kill -0 "$PROXY_PID" 2>/dev/null; do
			sleep 0.1
			waited=$((waited + 1))
		done
		STARTED[$name]="$(grep -m1 -o 'started: .*' "$logf" || true)"
	fi
}
declare -A STARTED

# ---------------------------------------------------------------- load generator: sipp
UAS_PID=""
lg_sipp_start_uas() {
	(pin "$LG_CPUSET" sipp "${SIPP_SF_UAS[@]}" -i 127.0.0.1 -p "$UAS_PORT" -nostdin -buff_size 4194304 \
		-timeout 7200) >"$OUT/uas-$1.log" 2>&1 &
	UAS_PID=$!
	PIDS+=("$UAS_PID")
	wait_port "$UAS_PORT" "$UAS_PID"
}
# lg_sipp_run TAG RATE COUNT [EXTRA...]: one bounded UAC run; prints
# "ok failed retrans wall_s lg_cpu_s p50_ms p99_ms" (latency only with -trace_rtt)
lg_sipp_run() {
	local tag="$1" rate="$2" count="$3"
	local dir="$OUT/sipp-$tag"
	shift 3
	mkdir -p "$dir"
	local bound=$((count * 3 / rate + 30)) t0 t1 uas0 uas1 uac_cpu
	uas0="$(cpu_ticks "$UAS_PID")"
	t0="$(date +%s.%N)"
	uac_cpu="$(
		cd "$dir"
		(pin "$LG_CPUSET" sipp "${SIPP_SF_UAC[@]}" "${UAC_INF[@]}" -s uas -i 127.0.0.1 -p "$((PROXY_PORT + 10))" \
			-r "$rate" -m "$count" -nostdin -buff_size 4194304 -timeout "$bound" -timeout_error \
			-trace_stat -stf stat.csv -fd 1 "$@" "127.0.0.1:$PROXY_PORT") >uac.log 2>&1 || true
		times >"$dir/times.txt" # in this shell: a pipeline would run it in a fork that has no children
		awk 'NR == 2 { gsub(/[ms]/, " "); split($0, a, " "); print a[1] * 60 + a[2] + a[3] * 60 + a[4] }' "$dir/times.txt"
	)"
	t1="$(date +%s.%N)"
	uas1="$(cpu_ticks "$UAS_PID")"
	local ok=0 failed="$count" retrans=0 p50=- p99=- rtt
	read -r ok failed retrans < <(awk -F';' 'NR == 1 { for (i = 1; i <= NF; i++) h[$i] = i; next }
		{ l = $0 } END { n = split(l, v, ";"); print v[h["SuccessfulCall(C)"]] + 0, v[h["FailedCall(C)"]] + 0, v[h["Retransmissions(C)"]] + 0 }' "$dir/stat.csv" 2>/dev/null) || true
	rtt="$(find "$dir" -name '*_rtt.csv' | head -1)"
	if [[ -n "$rtt" ]]; then
		read -r p50 p99 < <(awk -F';' 'NR > 1 && ($3 == "setup" || $3 == "1") { print $2 }' "$rtt" | sort -g |
			awk '{ a[NR] = $1 } END { if (NR == 0) { print "- -"; exit } i50 = int(NR * 0.50 + 0.5); i99 = int(NR * 0.99 + 0.5); if (i50 < 1) i50 = 1; if (i99 < 1) i99 = 1; print a[i50], a[i99] }') || true
	fi
	echo "$ok $failed $retrans $(calc "$t1 - $t0") $(calc "$uac_cpu + ($uas1 - $uas0) / $CLK_TCK") $p50 $p99"
}
lg_sipp_register() { # lg_sipp_register TAG RATE COUNT: REGISTER run through the proxy, same output
	local saved_uac=("${SIPP_SF_UAC[@]}") saved_inf=("${UAC_INF[@]}")
	SIPP_SF_UAC=(-sf "$ROOT/tools/sipp/register.xml") UAC_INF=(-inf "$USERS_REG")
	((AUTH)) && SIPP_SF_UAC=(-sf "$ROOT/tools/sipp/register_auth.xml")
	lg_sipp_run "$@"
	SIPP_SF_UAC=("${saved_uac[@]}") UAC_INF=("${saved_inf[@]}")
}

# ---------------------------------------------------------------- load generator: sipload
# tools/sipload CLI (see tools/sipload/README.md): --role uas|uac, --scenario call|register,
# --target, --uas-listen, --request-uri, --rate, --count, --duration 20s, --json. The JSON
# report: .uac.{succeeded,failed,retransmissions,latency_us.call_setup.{p50,p99}}; the
# fallbacks below keep older/planned field names working.
lg_sipload_start_uas() {
	local extra=()
	[[ "$SHAPE" == registrar ]] && extra=(--uas-register "$USERS" --registrar "127.0.0.1:$PROXY_PORT" --uas-register-rate "$REG_RATE")
	(pin "$LG_CPUSET" "$SIPLOAD" --role uas --scenario call --uas-listen "127.0.0.1:$UAS_PORT" --duration 7200s --quiet "${extra[@]}") \
		>"$OUT/uas-$1.log" 2>&1 &
	UAS_PID=$!
	PIDS+=("$UAS_PID")
	wait_port "$UAS_PORT" "$UAS_PID"
}
# lg_sipload_run TAG RATE COUNT [SCENARIO]: same output as lg_sipp_run
lg_sipload_run() {
	local tag="$1" rate="$2" count="$3" scenario="${4:-call}"
	local dir="$OUT/sipload-$tag"
	mkdir -p "$dir"
	local dur=$(((count + rate - 1) / rate)) t0 t1 uas0 uas1 uac_cpu ruri="sip:uas@127.0.0.1:$UAS_PORT" extra=()
	[[ "$SHAPE" == registrar ]] && ruri="sip:{user}@127.0.0.1:$PROXY_PORT" extra=(--users "$USERS")
	# REGISTER load uses its own users (reg0..): the UAS registered user0.. to itself
	[[ "$scenario" == register ]] && extra+=(--user-prefix reg)
	uas0="$(cpu_ticks "$UAS_PID")"
	t0="$(date +%s.%N)"
	uac_cpu="$(
		(pin "$LG_CPUSET" timeout $((dur * 3 + 30)) "$SIPLOAD" --role uac --scenario "$scenario" \
			--target "127.0.0.1:$PROXY_PORT" --request-uri "$ruri" --rate "$rate" --count "$count" \
			--duration "$((dur + 1))s" --json --quiet "${extra[@]}") >"$dir/report.json" 2>"$dir/uac.log" || true
		times >"$dir/times.txt" # in this shell: a pipeline would run it in a fork that has no children
		awk 'NR == 2 { gsub(/[ms]/, " "); split($0, a, " "); print a[1] * 60 + a[2] + a[3] * 60 + a[4] }' "$dir/times.txt"
	)"
	t1="$(date +%s.%N)"
	uas1="$(cpu_ticks "$UAS_PID")"
	# shellcheck disable=SC2016 # a jq program, not shell
	local j='def num(f): (f // 0) | tonumber? // 0;
		(.uac // .) as $c
		| ($c.latency_us // {}) as $l | ($l.call_setup // $l.register // $l.message // $l.invite // {}) as $k
		| [ num($c.succeeded // $c.successes),
		    num($c.failed // $c.failures),
		    num($c.retransmissions),
		    (if $k.p50 then $k.p50 / 1000 else "-" end),
		    (if $k.p99 then $k.p99 / 1000 else "-" end) ]
		| map(tostring) | join(" ")'
	local ok=0 failed="$count" retrans=0 p50=- p99=-
	read -r ok failed retrans p50 p99 < <(jq -r "$j" "$dir/report.json" 2>/dev/null) || true
	echo "$ok $failed $retrans $(calc "$t1 - $t0") $(calc "$uac_cpu + ($uas1 - $uas0) / $CLK_TCK") $p50 $p99"
}
lg_sipload_register() { lg_sipload_run "$1" "$2" "$3" register; }

lg_start_uas() { "lg_${LOAD}_start_uas" "$@"; }
lg_run() { "lg_${LOAD}_run" "$@"; }
lg_register() { "lg_${LOAD}_register" "$@"; }

# ---------------------------------------------------------------- one measured run
# measure NAME TEST RATE COUNT RUN [lg args...]: runs the load, records a row in runs.tsv,
# sets M_OK M_FAILED M_CPU_US M_PASS M_LG_CORES M_P50 M_P99
measure() {
	local name="$1" test="$2" rate="$3" count="$4" run="$5" kind=call
	shift 5
	[[ "$test" == register* ]] && kind=register
	local c0 c1 b0 b1 res ok failed retrans wall lgcpu p50 p99
	quiet_wait
	local dp0 du0 dp1 du1
	read -r dp0 du0 < <(udp_drops)
	b0="$(busy_ticks)"
	c0="$(cpu_ticks "$PROXY_PID")"
	if [[ "$kind" == register ]]; then res="$(lg_register "$name-$test-$rate-$run" "$rate" "$count" "$@")"; else res="$(lg_run "$name-$test-$rate-$run" "$rate" "$count" "$@")"; fi
	c1="$(cpu_ticks "$PROXY_PID")"
	b1="$(busy_ticks)"
	read -r dp1 du1 < <(udp_drops)
	read -r ok failed retrans wall lgcpu p50 p99 <<<"$res"
	local cpu_s cpu_us core lg other note=""
	cpu_s="$(calc "($c1 - $c0) / $CLK_TCK")"
	cpu_us="$(if ((ok > 0)); then calc "($c1 - $c0) / $CLK_TCK / $ok * 1e6"; else echo -; fi)"
	core="$(calc "($c1 - $c0) / $CLK_TCK / $wall")"
	lg="$(calc "$lgcpu / $wall")"
	other="$(calc "(($b1 - $b0) - ($c1 - $c0)) / $CLK_TCK / $wall - $lg")"
	M_PASS=1
	if ((ok == 0)) || awk -v o="$ok" -v f="$failed" 'BEGIN { exit !(f / (o + f) >= 0.001) }'; then M_PASS=0 note="failed>=0.1%"; fi
	if awk -v w="$wall" -v c="$count" -v r="$rate" 'BEGIN { exit !(w > c / r * 1.1 + 1) }'; then M_PASS=0 note="${note:+$note,}rate-not-carried"; fi
	cpu_us="$(calc_fmt %.1f "$cpu_us")" core="$(calc_fmt %.2f "$core")" lg="$(calc_fmt %.2f "$lg")" other="$(awk -v o="$other" 'BEGIN { printf "%.2f", o < 0 ? 0 : o }')"
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.3f\t%.3f\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$test" "$rate" "$run" "$ok" "$failed" \
		"$retrans" "$wall" "$cpu_s" "$cpu_us" "$core" "$lg" "$other" "$((dp1 - dp0))/$((du1 - du0))" "$p50" "$p99" "${note:-ok}" >>"$RUNS"
	log "$name $test rate=$rate run=$run: ok=$ok failed=$failed retrans=$retrans wall=${wall}s proxy ${cpu_us} us/$kind (${core} core) lg ${lg} cores, others ${other} cores, udp drops proxy/uas $((dp1 - dp0))/$((du1 - du0)), p50/p99 ${p50}/${p99} ms ${note}"
	M_DROP_P=$((dp1 - dp0)) M_DROP_U=$((du1 - du0))
	M_OK="$ok" M_CPU_US="$cpu_us" M_LG_CORES="$lg" M_P50="$p50" M_P99="$p99" M_OTHER="$other" M_CORE="$core"
}

# ---------------------------------------------------------------- the bench for one proxy
declare -A R # results: R[proxy.key]
FAIL=0
# up NAME: start the proxy and the UAS; on failure records the status and returns 1
up() {
	local name="$1"
	if ! start_proxy "$name"; then R[$name.status]="did not start"; FAIL=1; return 1; fi
	if ! lg_start_uas "$name"; then R[$name.status]="UAS did not start"; FAIL=1; stop_pid "$PROXY_PID"; return 1; fi
}
down() {
	stop_pid "$UAS_PID"
	if [[ "$1" == floor* ]]; then # the floor reports its datagram count on SIGTERM
		local ticks dg bt
		ticks="$(cpu_ticks "$PROXY_PID")"
		stop_pid "$PROXY_PID"
		read -r dg bt < <(sed -n 's/.*datagrams=\([0-9]*\) batches=\([0-9]*\).*/\1 \2/p' "$OUT/$1.log" | tail -1) || true
		F_TICKS[$1]=$((${F_TICKS[$1]:-0} + ticks)) F_DGRAMS[$1]=$((${F_DGRAMS[$1]:-0} + ${dg:-0})) F_BATCHES[$1]=$((${F_BATCHES[$1]:-0} + ${bt:-0}))
	else
		stop_pid "$PROXY_PID"
	fi
}
declare -A V F_TICKS F_DGRAMS F_BATCHES # V[proxy.key]: values of the repeats, space separated

# cpu_round NAME ROUND: one round of the fixed-rate runs of one proxy (fresh process)
cpu_round() {
	local name="$1" round="$2" rate
	log "=== $name round $round/$REPEAT ($SHAPE, load: $LOAD)"
	up "$name" || return 0
	if [[ "$SHAPE" == registrar ]]; then
		# every user registered (bindings created), then once more (refreshed): CPU per REGISTER
		measure "$name" register-add "$REG_RATE" "$USERS" "$round"
		V[$name.reg_add]+=" $M_CPU_US"
		((M_PASS)) || { R[$name.status]="REGISTER failed"; FAIL=1; }
		measure "$name" register-refresh "$REG_RATE" "$USERS" "$round"
		V[$name.reg]+=" $M_CPU_US"
	fi
	measure "$name" warmup "${RATE_LIST[0]}" $((RATE_LIST[0] * WARMUP_S)) "$round" # and smoke test
	if ((M_OK == 0)); then
		R[$name.status]="completed no call"
		FAIL=1
		down "$name"
		return 0
	fi
	for rate in "${RATE_LIST[@]}"; do
		measure "$name" cpu "$rate" $((rate * DURATION)) "$round"
		V[$name.cpu.$rate]+=" $M_CPU_US" V[$name.lg.$rate]+=" $M_LG_CORES" V[$name.other.$rate]+=" $M_OTHER"
		# runs while the rest of the machine was (nearly) idle: the least disturbed figures
		if awk -v o="$M_OTHER" 'BEGIN { exit !(o < 0.3) }'; then V[$name.quiet.$rate]+=" $M_CPU_US"; fi
		if ((!M_PASS)); then
			V[$name.fail.$rate]=1
			[[ "$name" == floor* ]] || { FAIL=1; R[$name.status]="calls failed at $rate/s"; }
		fi
	done
	down "$name"
}
cpu_summary() {
	local name="$1" rate
	for rate in "${RATE_LIST[@]}"; do
		R[$name.cpu.$rate]="$(median <<<"${V[$name.cpu.$rate]:-}")"
		R[$name.min.$rate]="$(tr ' ' '\n' <<<"${V[$name.cpu.$rate]:-}" | grep -E '^[0-9.]+$' | sort -g | head -1)"
		R[$name.lg.$rate]="$(median <<<"${V[$name.lg.$rate]:-}")"
		R[$name.other.$rate]="$(median <<<"${V[$name.other.$rate]:-}")"
		local q="${V[$name.quiet.$rate]:-}"
		R[$name.quiet.$rate]="$(median <<<"$q")($(wc -w <<<"$q"))"
		[[ -z "${V[$name.fail.$rate]:-}" ]] || R[$name.cpu.$rate]+="!"
	done
	if [[ "$SHAPE" == registrar ]]; then
		R[$name.reg_add_us]="$(median <<<"${V[$name.reg_add]:-}")"
		R[$name.reg_us]="$(median <<<"${V[$name.reg]:-}")"
	fi
	if [[ "$name" == floor* ]]; then
		local dg="${F_DGRAMS[$name]:-0}" bt="${F_BATCHES[$name]:-0}"
		R[$name.batch]="$(calc_fmt %.1f "$(if ((bt > 0)); then calc "$dg / $bt"; else echo -; fi)")"
		R[$name.dgram_us]="$(calc_fmt %.2f "$(if ((dg > 0)); then calc "${F_TICKS[$name]} / $CLK_TCK / $dg * 1e6"; else echo -; fi)")"
		log "$name: ${R[$name.dgram_us]} us per datagram over $dg datagrams (mean batch ${R[$name.batch]})"
	fi
	: "${R[$name.status]:=ok}"
}

# max_latency NAME: the rate search and the latency run, on a fresh process
max_latency() {
	local name="$1"
	((!SKIP_MAX || !SKIP_LATENCY)) || return 0
	[[ "${R[$name.status]:-ok}" == ok ]] || return 0
	log "=== $name: max calls/s and latency ($SHAPE, load: $LOAD)"
	up "$name" || return 0
	if [[ "$SHAPE" == registrar ]]; then measure "$name" register-add "$REG_RATE" "$USERS" max; fi
	measure "$name" warmup "${RATE_LIST[0]}" $((RATE_LIST[0] * WARMUP_S)) max
	if ((!SKIP_MAX)); then
		max_search "$name"
		if [[ "$SHAPE" == registrar ]]; then max_search "$name" register-max "$REG_RATE" reg_max; fi
		# the failed step leaves calls retransmitting in the UAS: latency starts afresh
		down "$name"
		((!SKIP_LATENCY)) || return 0
		up "$name" || return 0
		if [[ "$SHAPE" == registrar ]]; then measure "$name" register-add "$REG_RATE" "$USERS" lat; fi
		measure "$name" warmup "${RATE_LIST[0]}" $((RATE_LIST[0] * WARMUP_S)) lat
	fi
	if ((!SKIP_LATENCY)); then
		local lr="${LATENCY_RATE:-}"
		if [[ -z "$lr" ]]; then
			local km="${R[kamailio.max]:-}"
			if [[ -n "$km" && "$km" != - ]]; then lr=$((km / 2)); else lr=$((RATE_LIST[0] / 2)); fi
		fi
		local extra=()
		[[ "$LOAD" == sipp ]] && extra=(-trace_rtt -rtt_freq 1000)
		measure "$name" latency "$lr" $((lr * DURATION)) 1 "${extra[@]}"
		R[$name.lat_rate]="$lr" R[$name.p50]="$M_P50" R[$name.p99]="$M_P99"
	fi
	down "$name"
}

# max_search NAME [TEST START KEY]: step the rate up until a step fails, then bisect
# twice; TEST "max" (calls, key "max") or "register-max" (REGISTERs, key "reg_max")
max_search() {
	local name="$1" test="${2:-max}" rate="${3:-$MAX_START}" key="${4:-max}" best=- fail="" lgb=- coreb=- step fdrops=""
	while ((rate <= MAX_LIMIT)); do
		measure "$name" "$test" "$rate" $((rate * STEP_DURATION)) 1
		if ((M_PASS)); then best="$rate" lgb="$M_LG_CORES" coreb="$M_CORE"; else fail="$rate" fdrops="$M_DROP_P/$M_DROP_U"; break; fi
		rate=$((rate + MAX_STEP))
	done
	if [[ -n "$fail" && "$best" != - ]]; then
		for step in $((MAX_STEP / 2)) $((MAX_STEP / 4)); do
			((step >= 100)) || break
			rate=$((best + step))
			((rate < fail)) || continue
			measure "$name" "$test" "$rate" $((rate * STEP_DURATION)) 1
			if ((M_PASS)); then best="$rate" lgb="$M_LG_CORES" coreb="$M_CORE"; else fail="$rate"; fi
		done
	fi
	R[$name.$key]="$best"
	R[$name.${key}_lg]="$lgb"
	R[$name.${key}_core]="$coreb"
	# The proxy set the limit only if it was (nearly) saturated at the best step: its
	# process tree used >= 85% of the CPUs it is pinned to. Otherwise the load generator
	# (or the machine: other processes, a stall) did, and the figure is a lower bound.
	local cap=1
	[[ "$name" == sipedge2 ]] && cap="$NCPU"
	local note=LG-bound
	if [[ "$best" == - ]]; then
		note=below-start
	elif [[ -z "$fail" ]]; then
		note=">=limit"
	elif awk -v c="$coreb" -v n="$cap" 'BEGIN { exit !(c >= 0.85 * n) }'; then
		note=proxy-bound
	elif awk -v d="$fdrops" 'BEGIN { split(d, x, "/"); exit !(x[1] > 0 && x[1] >= x[2]) }'; then
		note=proxy-drops # the proxy's socket overflowed first: the proxy did not keep up
	fi
	R[$name.${key}_note]="$note"
	R[$name.${key}_fail_drops]="${fdrops:--}"
}

# ---------------------------------------------------------------- run
log "results in $OUT"
log "machine: $NCPU CPUs, $(uname -r), load average $(cut -d' ' -f1-3 /proc/loadavg); $(kamailio -v 2>/dev/null | head -1); $(sipp -v 2>/dev/null | grep -o 'SIPp v[^ ]*' | head -1)"
if [[ -n "$LOAD_STATUS" ]]; then
	log "skipping: $LOAD_STATUS"
	echo "load generator $LOAD unavailable: $LOAD_STATUS"
	exit 0
fi
ORDER=()
for p in kamailio sipedge sipedge2 base; do has_proxy "$p" && ORDER+=("$p"); done
if has_proxy floor && [[ "$SHAPE" != registrar ]]; then ORDER+=(floorA floorB); fi
RUNNABLE=()
for p in "${ORDER[@]}"; do
	if [[ "$p" == sipedge* && -n "$SIPEDGE_STATUS" ]]; then
		R[$p.status]="not run: $SIPEDGE_STATUS"
		FAIL=1
		log "$p: ${R[$p.status]}"
	else
		RUNNABLE+=("$p")
	fi
done
# CPU per call: the proxies take turns, round after round, so that drifting noise from
# other work on the machine falls on all of them alike
for round in $(seq "$REPEAT"); do
	for p in "${RUNNABLE[@]}"; do
		if [[ "${R[$p.status]:-ok}" == ok ]]; then cpu_round "$p" "$round"; fi
	done
done
for p in "${RUNNABLE[@]}"; do cpu_summary "$p"; done
# max and latency: Kamailio first (the latency rate is half its max); not for the floor
for p in "${RUNNABLE[@]}"; do [[ "$p" == floor* ]] || max_latency "$p"; done

# ---------------------------------------------------------------- table
get() { echo "${R[$1]:--}"; }
ratio() { awk -v a="${1%!}" -v b="${2%!}" 'BEGIN { if (a + 0 > 0 && b + 0 > 0) printf "%.2f", a / b; else printf "-" }'; }
FLOOR_CALL_A="$(awk -v d="$(get floorA.dgram_us)" -v n="$DGRAMS_PER_CALL" 'BEGIN { if (d + 0 > 0) printf "%.1f", d * n; else printf "-" }')"
FLOOR_CALL_B="$(awk -v d="$(get floorB.dgram_us)" -v n="$DGRAMS_PER_CALL" 'BEGIN { if (d + 0 > 0) printf "%.1f", d * n; else printf "-" }')"
{
	echo
	echo "sipedge vs Kamailio — shape $SHAPE, load $LOAD, $(date -u +%FT%TZ), $(hostname)"
	echo "proxy pinned to CPU $PROXY_CPU, load generator (UAC+UAS) pinned to CPU $LG_CPU; sipedge2 = --shards 2 on CPUs 0-1 with the load generator sharing them"
	echo "CPU per call = utime+stime of all the proxy's processes over a run of rate x ${DURATION}s calls / calls completed; median of $REPEAT"
	echo "columns per rate: median and min us/call; quiet = median us/call of the runs when other processes used < 0.3 core"
	echo "(their count in parentheses); load generator cores; cores used by other processes (median, the noise)"
	printf '\n%-9s' proxy
	for rate in "${RATE_LIST[@]}"; do printf ' | %-37s' "@$rate/s med   min  quiet(n)  lg other"; done
	printf ' | %7s %-11s %13s %8s %11s | %s\n' max_cps note drops@fail lat_rate p50/p99_ms status
	for p in "${ORDER[@]}"; do
		printf '%-9s' "$p"
		for rate in "${RATE_LIST[@]}"; do
			printf ' | %-37s' "$(printf '%7s %5s %9s %4s %5s' "$(get "$p.cpu.$rate")" "$(get "$p.min.$rate")" "$(get "$p.quiet.$rate")" "$(get "$p.lg.$rate")" "$(get "$p.other.$rate")")"
		done
		printf ' | %7s %-11s %13s %8s %11s | %s\n' "$(get "$p.max")" "$(get "$p.max_note")" "$(get "$p.max_fail_drops")" "$(get "$p.lat_rate")" \
			"$(get "$p.p50")/$(get "$p.p99")" "$(get "$p.status")"
	done
	if [[ "$SHAPE" == registrar ]]; then
		echo
		printf '%-10s %18s %22s %14s %s\n' proxy "us/REGISTER(add)" "us/REGISTER(refresh)" "max REGISTER/s" note
		for p in "${ORDER[@]}"; do
			printf '%-10s %18s %22s %14s %s\n' "$p" "$(get "$p.reg_add_us")" "$(get "$p.reg_us")" "$(get "$p.reg_max")" "$(get "$p.reg_max_note")"
		done
		echo "REGISTER ratio sipedge/Kamailio (refresh): $(ratio "$(get sipedge.reg_us)" "$(get kamailio.reg_us)")"
	fi
	echo
	echo "floor (tools/floor, $DGRAMS_PER_CALL datagrams per call): A recvfrom/sendto $(get floorA.dgram_us) us/datagram = $FLOOR_CALL_A us/call;" \
		"B recvmmsg/sendmmsg (mean batch $(get floorB.batch)) $(get floorB.dgram_us) us/datagram = $FLOOR_CALL_B us/call"
	for rate in "${RATE_LIST[@]}"; do
		echo "ratios @$rate/s: sipedge/Kamailio $(ratio "$(get "sipedge.cpu.$rate")" "$(get "kamailio.cpu.$rate")")," \
			"sipedge/floorB $(ratio "$(get "sipedge.cpu.$rate")" "$FLOOR_CALL_B"), Kamailio/floorB $(ratio "$(get "kamailio.cpu.$rate")" "$FLOOR_CALL_B")," \
			"sipedge2/sipedge $(ratio "$(get "sipedge2.cpu.$rate")" "$(get "sipedge.cpu.$rate")")," \
			"sipedge/base $(ratio "$(get "sipedge.cpu.$rate")" "$(get "base.cpu.$rate")")"
	done
	echo "max calls/s: sipedge/Kamailio $(ratio "$(get sipedge.max)" "$(get kamailio.max)"), sipedge2/sipedge $(ratio "$(get sipedge2.max)" "$(get sipedge.max)")" \
		"(proxy-bound: the proxy used >= 85% of its CPUs at that rate; proxy-drops: its socket overflowed first in the failing step; LG-bound: neither, so the load generator or the machine set the limit and the figure is a lower bound; drops@fail: UDP receive-buffer drops proxy/UAS socket in the first failing step)"
	for p in "${!STARTED[@]}"; do echo "$p: ${STARTED[$p]}"; done
	[[ -z "${STARTED[sipedge]:-}" ]] || echo "sipedge tree when the bench started: ${SIPEDGE_REV:-?} (binary $( ((BUILD)) && echo 'built then' || echo 'not rebuilt: --no-build'))"
	echo "! = a run at that rate had failed calls or did not carry the rate; runs: $RUNS"
} | tee "$OUT/table.txt"

# summary.json
{
	printf '{"shape":"%s","load":"%s","stamp":"%s","duration_s":%s,"repeat":%s,"dgrams_per_call":%s,"proxies":{' \
		"$SHAPE" "$LOAD" "$STAMP" "$DURATION" "$REPEAT" "$DGRAMS_PER_CALL"
	first=1
	for p in "${ORDER[@]}"; do
		((first)) || printf ','
		first=0
		printf '"%s":{"status":"%s"' "$p" "$(get "$p.status")"
		for k in "${!R[@]}"; do
			[[ "$k" == "$p".* && "$k" != "$p.status" ]] || continue
			printf ',"%s":"%s"' "${k#"$p".}" "${R[$k]}"
		done
		printf '}'
	done
	printf '},"floor_us_per_call":{"A":"%s","B":"%s"}}\n' "$FLOOR_CALL_A" "$FLOOR_CALL_B"
} >"$OUT/summary.json"

if ((FAIL)); then
	echo "FAILED: a proxy did not complete its calls or did not run (see status column)" >&2
	exit 1
fi
exit 0
}
