#!/usr/bin/env bash
# benches/e2e/stream_calls.sh: CPU per call over TCP and over TLS, sipedge vs Kamailio,
# on this machine, in one run (the stream-transport sibling of run.sh --shape stateful).
#
# Usage: benches/e2e/stream_calls.sh [options]
#   --transports "tcp tls"   transports to measure (default both)
#   --proxies LIST           comma list of kamailio,sipedge (default both)
#   --rate R                 calls/s offered (default 4000)
#   --duration S             seconds per measured run (default 10)
#   --rounds N               rounds; the proxies take turns in each (default 3); the table
#                            shows the median and the minimum
#   --connections N          UAC connections to the proxy (default 50)
#   --proxy-port P           proxy TCP port; TLS is P+1 (default 16060)
#   --uas-port P             UAS port (default 16080)
#   --proxy-cpu C --lg-cpu C CPUs of the proxy and of the load generator (default 1, 0)
#   --nice N                 nice level of proxy and load generator (default -10; 0 = off)
#   --no-build               do not run cargo build
#   -h | --help
#
# Each run: the proxy (one sipedge shard, or Kamailio with one TCP worker, tlsf, -m 1024)
# pinned to --proxy-cpu; tools/sipload as UAS (--role uas --transport T) and as UAC
# (--connections N, --transport T) pinned to --lg-cpu; the same stateful record-routing
# relay on both sides: INVITE/100/180/200/ACK/BYE/200, the proxy → UAS leg on the same
# transport (sipedge --upstream 'sip:127.0.0.1:UAS;transport=T', Kamailio $du likewise,
# kamailio/kam_stateful_stream.cfg). A 2 s warm-up run (which also opens the proxy → UAS
# connection), then one bounded run of rate x duration calls; utime+stime of ALL the
# proxy's processes (/proc/PID/stat of it and its descendants) before and after, ÷ calls
# completed = µs per call. The UAC's connections (and TLS handshakes) are opened before
# its load starts and count in the window (50 handshakes: < 1 % of a 40,000-call run).
# Also recorded: the load generator's CPU, other processes' cores during the run (noise
# on a shared machine), and the connections the proxy held to the UAS (from ss).
# TLS: TLS 1.3, ECDSA P-256 server certificates (benches/e2e/certs.sh) on the proxy and
# the UAS; the UAC and sipedge verify against the bench CA, Kamailio does not verify.
# Results: results/stream-<stamp>/{runs.tsv,table.txt}; every process started is stopped
# on exit (trap). Loopback only; every run bounded in count and time.
set -euo pipefail
ulimit -c 0 # no core dumps (Kamailio aborts on SIGTERM with TLS loaded; dumping its shm takes a minute)
{
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
TRANSPORTS="tcp tls" PROXIES="kamailio,sipedge" RATE=4000 DURATION=10 ROUNDS=3 CONNS=50
PROXY_PORT=16060 UAS_PORT=16080 PROXY_CPU=1 LG_CPU=0 NICE=-10 BUILD=1
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "stream_calls.sh: $*" >&2; exit 2; }
while (($#)); do
	case "$1" in
	--transports) TRANSPORTS="$2"; shift ;;
	--proxies) PROXIES="$2"; shift ;;
	--rate) RATE="$2"; shift ;;
	--duration) DURATION="$2"; shift ;;
	--rounds) ROUNDS="$2"; shift ;;
	--connections) CONNS="$2"; shift ;;
	--proxy-port) PROXY_PORT="$2"; shift ;;
	--uas-port) UAS_PORT="$2"; shift ;;
	--proxy-cpu) PROXY_CPU="$2"; shift ;;
	--lg-cpu) LG_CPU="$2"; shift ;;
	--nice) NICE="$2"; shift ;;
	--no-build) BUILD=0 ;;
	-h | --help) usage; exit 0 ;;
	*) die "unknown option $1 (see --help)" ;;
	esac
	shift
done
TLS_PORT=$((PROXY_PORT + 1))
STAMP="$(date +%Y%m%d-%H%M%S)"
OUT="$HERE/results/stream-$STAMP"
mkdir -p "$OUT"
ln -sfn "$(basename "$OUT")" "$HERE/results/latest-stream"
log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

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
	kill -TERM "$pid" 2>/dev/null || true
	for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
	kill -KILL "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
	for p in "${PIDS[@]}"; do [[ "$p" == "$pid" ]] || keep+=("$p"); done
	PIDS=("${keep[@]}")
}
pin() { local set="$1"; shift; if ((NICE != 0)); then exec nice -n "$NICE" taskset -c "$set" "$@"; else exec taskset -c "$set" "$@"; fi; }
tree_pids() { local p c; echo "$1"; for p in $(ps -o pid= --ppid "$1" 2>/dev/null); do for c in $(tree_pids "$p"); do echo "$c"; done; done; }
cpu_ticks() {
	local total=0 p line rest
	for p in $(tree_pids "$1"); do
		line="$(cat "/proc/$p/stat" 2>/dev/null)" || continue
		rest="${line##*) }"
		read -r -a f <<<"$rest"
		total=$((total + f[11] + f[12]))
	done
	echo "$total"
}
busy_ticks() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat; }
calc() { awk "BEGIN { printf \"%s\", $* }"; }
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print a[(NR + 1) / 2]; else printf "%.2f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
tcp_listening() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }
wait_listen() { for _ in $(seq 100); do tcp_listening "$1" && return 0; kill -0 "$2" 2>/dev/null || return 1; sleep 0.1; done; return 1; }
CLK_TCK="$(getconf CLK_TCK)"

SIPEDGE="$ROOT/target/release/sipedge" SIPLOAD="$ROOT/target/release/sipload"
if ((BUILD)); then
	log "cargo build --release (sipedge, sipload)"
	(cd "$ROOT" && nice -n 10 cargo build --release -p sipedge -p sipload) >"$OUT/cargo-build.log" 2>&1 || die "build failed ($OUT/cargo-build.log)"
fi
[[ -x "$SIPEDGE" && -x "$SIPLOAD" ]] || die "need $SIPEDGE and $SIPLOAD (cargo build --release)"
cp "$SIPEDGE" "$OUT/sipedge" && SIPEDGE="$OUT/sipedge"
cp "$SIPLOAD" "$OUT/sipload" && SIPLOAD="$OUT/sipload"
REV="$(cd "$ROOT" && git describe --always --dirty 2>/dev/null || echo '?')"
"$HERE/certs.sh" "$OUT/certs"
CERT="$OUT/certs/ec.crt" KEY="$OUT/certs/ec.key" CA="$OUT/certs/ca.crt"
printf '[tls]\ncert = "%s"\nkey = "%s"\nca = "%s"\n' "$CERT" "$KEY" "$CA" >"$OUT/sipedge.toml"
KAM_MPATH="$(dirname "$(find /usr/lib /usr/local/lib /usr/lib64 -path '*kamailio/modules/sl.so' 2>/dev/null | head -1)")"
KAM_CFG="$OUT/kam_stateful_stream.cfg"
sed -e "s#^mpath=.*#mpath=\"$KAM_MPATH/\"#" -e "s#unix:/tmp/kamailio_stream_ctl#unix:$OUT/kam-ctl#" \
	-e "s/127\.0\.0\.1:15062/127.0.0.1:$PROXY_PORT/g" -e "s/127\.0\.0\.1:15063/127.0.0.1:$TLS_PORT/g" \
	-e "s/127\.0\.0\.1:15080/127.0.0.1:$UAS_PORT/g" "$HERE/kamailio/kam_stateful_stream.cfg" >"$KAM_CFG"

RUNS="$OUT/runs.tsv"
printf 'round\ttransport\tproxy\tcalls_ok\tcalls_failed\tproxy_cpu_s\tus_per_call\tlg_cores\tother_cores\tconns_to_uas\n' >"$RUNS"
PROXY_PID="" UAS_PID=""
start_proxy() { # start_proxy NAME TRANSPORT ROUND
	local name="$1" tr="$2" port="$PROXY_PORT"
	[[ "$tr" == tls ]] && port="$TLS_PORT"
	for p in "$PROXY_PORT" "$TLS_PORT" "$UAS_PORT"; do tcp_listening "$p" && die "TCP port $p is in use"; done
	case "$name" in
	kamailio)
		local a=()
		[[ "$tr" == tls ]] && a=(-A WITH_TLS -A "TLS_CERT=\"$CERT\"" -A "TLS_KEY=\"$KEY\"")
		(pin "$PROXY_CPU" kamailio -f "$KAM_CFG" -DD -E -m 1024 -n 1 -x tlsf -X tlsf "${a[@]}") >"$OUT/kamailio-$tr-$3.log" 2>&1 &
		;;
	sipedge)
		rm -rf "$OUT/sipedge-data"
		local a=(run --shards 1 --listen "tcp:127.0.0.1:$PROXY_PORT" --listen "tls:127.0.0.1:$TLS_PORT"
			--config "$OUT/sipedge.toml" --upstream "sip:127.0.0.1:$UAS_PORT;transport=$tr" --data-dir "$OUT/sipedge-data")
		echo "$SIPEDGE ${a[*]}" >"$OUT/sipedge.cmd"
		(pin "$PROXY_CPU" "$SIPEDGE" "${a[@]}") >"$OUT/sipedge-$tr-$3.log" 2>&1 &
		;;
	esac
	PROXY_PID=$!
	PIDS+=("$PROXY_PID")
	wait_listen "$port" "$PROXY_PID" || { log "$name did not come up"; return 1; }
	sleep 0.5
}
start_uas() { # start_uas TRANSPORT TAG
	(pin "$LG_CPU" "$SIPLOAD" --role uas --transport "$1" --uas-listen "127.0.0.1:$UAS_PORT" \
		--tls-cert "$CERT" --tls-key "$KEY" --duration 600s --quiet --json) >"$OUT/uas-$2.json" 2>"$OUT/uas-$2.log" &
	UAS_PID=$!
	PIDS+=("$UAS_PID")
	wait_listen "$UAS_PORT" "$UAS_PID"
}
uac() { # uac TRANSPORT RATE COUNT REPORT
	local tr="$1" port="$PROXY_PORT"
	[[ "$tr" == tls ]] && port="$TLS_PORT"
	(pin "$LG_CPU" timeout $(($3 / $2 * 3 + 30)) "$SIPLOAD" --role uac --transport "$tr" --target "127.0.0.1:$port" \
		--ca "$CA" --connections "$CONNS" --request-uri "sip:uas@127.0.0.1:$UAS_PORT;transport=$tr" \
		--rate "$2" --count "$3" --duration "$(($3 / $2 + 1))s" --json --quiet) >"$4" 2>"$4.log" || true
}
jget() { python3 -c "import json,sys
try:
    r=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))
except Exception: print(0)" "$@"; }

COUNT=$((RATE * DURATION))
log "output in $OUT (sipedge $REV; rate $RATE/s x ${DURATION}s, $CONNS connections, $ROUNDS rounds)"
IFS=',' read -r -a PROXY_LIST <<<"$PROXIES"
for ((r = 1; r <= ROUNDS; r++)); do
	for tr in $TRANSPORTS; do
		for px in "${PROXY_LIST[@]}"; do
			tag="$px-$tr-$r"
			start_proxy "$px" "$tr" "$r" || { stop_pid "$PROXY_PID"; continue; }
			start_uas "$tr" "$tag" || { log "UAS did not come up"; stop_pid "$PROXY_PID"; continue; }
			uac "$tr" "$RATE" $((RATE * 2)) "$OUT/warmup-$tag.json"
			p0="$(cpu_ticks "$PROXY_PID")" u0="$(cpu_ticks "$UAS_PID")" b0="$(busy_ticks)" t0="$(date +%s.%N)"
			uac "$tr" "$RATE" "$COUNT" "$OUT/run-$tag.json" &
			upid=$!
			sleep "$((DURATION / 2))"
			conns="$(ss -Htn state established "( dport = :$UAS_PORT )" 2>/dev/null | wc -l)"
			wait "$upid" || true
			p1="$(cpu_ticks "$PROXY_PID")" u1="$(cpu_ticks "$UAS_PID")" b1="$(busy_ticks)" t1="$(date +%s.%N)"
			ok="$(jget "$OUT/run-$tag.json" "r['uac']['succeeded']")"
			failed="$(jget "$OUT/run-$tag.json" "r['uac']['failed']")"
			uac_cpu="$(jget "$OUT/run-$tag.json" "r['cpu']['user_s']+r['cpu']['system_s']")"
			wall="$(calc "$t1 - $t0")"
			pcpu="$(calc "($p1 - $p0) / $CLK_TCK")"
			us="-"
			((ok > 0)) && us="$(calc "int(($p1 - $p0) / $CLK_TCK * 1e6 / $ok * 10 + 0.5) / 10")"
			lg="$(calc "int(($uac_cpu + ($u1 - $u0) / $CLK_TCK) / $wall * 100 + 0.5) / 100")"
			other="$(calc "int((($b1 - $b0) - ($p1 - $p0) - ($u1 - $u0)) / $CLK_TCK / $wall * 100 - $uac_cpu / $wall * 100 + 0.5) / 100")"
			printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$tr" "$px" "$ok" "$failed" "$pcpu" "$us" "$lg" "$other" "$conns" >>"$RUNS"
			log "round $r $tr $px: ok $ok failed $failed, $us us/call (proxy $pcpu s), lg $lg cores, other $other, $conns connection(s) to the UAS"
			stop_pid "$UAS_PID"
			stop_pid "$PROXY_PID"
		done
	done
done

{
	echo "CPU per call, stateful record-routing relay, sipload $CONNS connections, $RATE calls/s x ${DURATION}s, $ROUNDS rounds (sipedge $REV, $(date -u +%FT%TZ))"
	printf '%-10s %-9s %10s %10s %8s %10s %s\n' transport proxy "med_us" "min_us" "failed" "other" "conns_to_uas"
	for tr in $TRANSPORTS; do
		for px in "${PROXY_LIST[@]}"; do
			vals="$(awk -F'\t' -v t="$tr" -v p="$px" 'NR > 1 && $2 == t && $3 == p && $7 != "-" { print $7 }' "$RUNS" | tr '\n' ' ')"
			med="$(echo "$vals" | median)"
			mn="$(echo "$vals" | tr ' ' '\n' | grep -v '^$' | sort -g | head -1)"
			fl="$(awk -F'\t' -v t="$tr" -v p="$px" 'NR > 1 && $2 == t && $3 == p { s += $5 } END { print s + 0 }' "$RUNS")"
			ot="$(awk -F'\t' -v t="$tr" -v p="$px" 'NR > 1 && $2 == t && $3 == p { printf "%s%s", sep, $9; sep = "," }' "$RUNS")"
			cn="$(awk -F'\t' -v t="$tr" -v p="$px" 'NR > 1 && $2 == t && $3 == p { printf "%s%s", sep, $10; sep = "," }' "$RUNS")"
			printf '%-10s %-9s %10s %10s %8s %10s %s\n' "$tr" "$px" "$med" "${mn:--}" "$fl" "$ot" "$cn"
			eval "MED_${px}_${tr}=$med"
		done
		k="MED_kamailio_$tr" s="MED_sipedge_$tr"
		if [[ -n "${!k:-}" && -n "${!s:-}" && "${!k}" != "-" && "${!s}" != "-" ]]; then
			echo "ratio $tr sipedge/Kamailio: $(calc "int(${!s} / ${!k} * 100 + 0.5) / 100")"
		fi
	done
} | tee "$OUT/table.txt"
exit 0
}
