#!/usr/bin/env bash
# benches/e2e/tls_handshakes.sh: full TLS 1.3 handshakes per second on one shard,
# sipedge vs Kamailio, with an ECDSA P-256 and an RSA-2048 certificate.
#
# Usage: benches/e2e/tls_handshakes.sh [options]
#   --keys "ec rsa"          certificates (default both; benches/e2e/certs.sh makes them)
#   --proxies LIST           comma list of kamailio,sipedge (default both)
#   --count N                handshakes per run at most (default 30000)
#   --duration S             seconds per run at most (default 8)
#   --parallel K             handshakes in progress at once (default 8)
#   --groups x25519|default  key exchange offered by the client (default x25519: what
#                            OpenSSL 3.0 and rustls share; default = rustls' list with
#                            X25519MLKEM768 first, which sipedge then picks)
#   --rounds N               rounds, the servers taking turns (default 2); medians reported
#   --port P                 (default 16261)
#   --server-cpu C --client-cpu C   (default 1, 0)
#   --no-build
#   -h | --help
#
# Servers: sipedge `run --shards 1 --listen tls:127.0.0.1:P --tls-cert … --tls-key …`;
# Kamailio kamailio/kam_stateful_stream.cfg -A WITH_TLS (tcp_children=1: one TCP worker
# does every handshake; tlsf; the tcp main process accepts), each pinned to
# --server-cpu. Client: tools/sipload's `connload handshakes` pinned to --client-cpu:
# a new TCP connection per handshake, TLS 1.3 only, no resumption, K at a time, bounded
# by --count and --duration; it trusts nothing but checks the server's signature.
# Measured: handshakes/s (completed, as the client sees them) and the server's CPU per
# handshake (utime+stime of ALL its processes from /proc, over the run plus 0.5 s).
# "server core use" near 1.0 means the server set the rate; lower means the client did.
# Results: results/tls-<stamp>/{runs.tsv,table.txt}; every process started is stopped
# on exit (trap). Loopback only.
set -euo pipefail
ulimit -c 0 # no core dumps (Kamailio aborts on SIGTERM with TLS loaded; dumping its shm takes a minute)
{
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
KEYS="ec rsa" PROXIES="kamailio,sipedge" COUNT=30000 DURATION=8 PARALLEL=8 KX_GROUPS=x25519 ROUNDS=2
PORT=16261 SERVER_CPU=1 CLIENT_CPU=0 BUILD=1
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "tls_handshakes.sh: $*" >&2; exit 2; }
while (($#)); do
	case "$1" in
	--keys) KEYS="$2"; shift ;;
	--proxies) PROXIES="$2"; shift ;;
	--count) COUNT="$2"; shift ;;
	--duration) DURATION="$2"; shift ;;
	--parallel) PARALLEL="$2"; shift ;;
	--groups) KX_GROUPS="$2"; shift ;;
	--rounds) ROUNDS="$2"; shift ;;
	--port) PORT="$2"; shift ;;
	--server-cpu) SERVER_CPU="$2"; shift ;;
	--client-cpu) CLIENT_CPU="$2"; shift ;;
	--no-build) BUILD=0 ;;
	-h | --help) usage; exit 0 ;;
	*) die "unknown option $1 (see --help)" ;;
	esac
	shift
done
OUT="$HERE/results/tls-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
ln -sfn "$(basename "$OUT")" "$HERE/results/latest-tls"
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
	for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
	kill -KILL "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
	for p in "${PIDS[@]}"; do [[ "$p" == "$pid" ]] || keep+=("$p"); done
	PIDS=("${keep[@]}")
}
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
tcp_listening() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }
wait_listen() { for _ in $(seq 100); do tcp_listening "$1" && return 0; kill -0 "$2" 2>/dev/null || return 1; sleep 0.1; done; return 1; }
calc() { awk "BEGIN { printf \"%s\", $* }"; }
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print a[(NR + 1) / 2]; else printf "%.2f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
jget() { python3 -c "import json,sys
try:
    r=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))
except Exception: print(0)" "$@"; }
CLK_TCK="$(getconf CLK_TCK)"

SIPEDGE="$ROOT/target/release/sipedge" CONNLOAD="$ROOT/target/release/connload"
if ((BUILD)); then
	(cd "$ROOT" && nice -n 10 cargo build --release -p sipedge -p sipload) >"$OUT/cargo-build.log" 2>&1 || die "build failed"
fi
[[ -x "$SIPEDGE" && -x "$CONNLOAD" ]] || die "need $SIPEDGE and $CONNLOAD (cargo build --release)"
cp "$SIPEDGE" "$OUT/sipedge" && SIPEDGE="$OUT/sipedge"
REV="$(cd "$ROOT" && git describe --always --dirty 2>/dev/null || echo '?')"
"$HERE/certs.sh" "$OUT/certs"
KAM_MPATH="$(dirname "$(find /usr/lib /usr/local/lib /usr/lib64 -path '*kamailio/modules/sl.so' 2>/dev/null | head -1)")"
KAM_CFG="$OUT/kam_stateful_stream.cfg"
# TCP on PORT-1 (unused here), TLS on PORT
sed -e "s#^mpath=.*#mpath=\"$KAM_MPATH/\"#" -e "s#unix:/tmp/kamailio_stream_ctl#unix:$OUT/kam-ctl#" \
	-e "s/127\.0\.0\.1:15062/127.0.0.1:$((PORT - 1))/g" -e "s/127\.0\.0\.1:15063/127.0.0.1:$PORT/g" \
	"$HERE/kamailio/kam_stateful_stream.cfg" >"$KAM_CFG"

RUNS="$OUT/runs.tsv"
printf 'round\tkey\tserver\thandshakes\tfailed\telapsed_s\tper_s\tserver_cpu_s\tserver_us_per_hs\tserver_core_use\tclient_cpu_s\tother_cores\n' >"$RUNS"
IFS=',' read -r -a PROXY_LIST <<<"$PROXIES"
log "output in $OUT (sipedge $REV; TLS 1.3, groups $KX_GROUPS, $PARALLEL in parallel)"
for ((r = 1; r <= ROUNDS; r++)); do
	for key in $KEYS; do
		CERT="$OUT/certs/$key.crt" KEY="$OUT/certs/$key.key"
		for px in "${PROXY_LIST[@]}"; do
			tcp_listening "$PORT" && die "port $PORT in use"
			case "$px" in
			kamailio)
				(exec taskset -c "$SERVER_CPU" kamailio -f "$KAM_CFG" -DD -E -m 1024 -n 1 -x tlsf -X tlsf \
					-A WITH_TLS -A "TLS_CERT=\"$CERT\"" -A "TLS_KEY=\"$KEY\"") >"$OUT/kamailio-$key-$r.log" 2>&1 &
				;;
			sipedge)
				rm -rf "$OUT/sipedge-data"
				(exec taskset -c "$SERVER_CPU" "$SIPEDGE" run --shards 1 --listen "tls:127.0.0.1:$PORT" --tls-cert "$CERT" \
					--tls-key "$KEY" --data-dir "$OUT/sipedge-data") >"$OUT/sipedge-$key-$r.log" 2>&1 &
				;;
			esac
			spid=$!
			PIDS+=("$spid")
			if ! wait_listen "$PORT" "$spid"; then log "$px did not come up"; stop_pid "$spid"; continue; fi
			sleep 1
			# warm-up: 200 handshakes
			taskset -c "$CLIENT_CPU" timeout 30 "$CONNLOAD" handshakes --target "127.0.0.1:$PORT" --count 200 --duration 5 \
				--parallel "$PARALLEL" --groups "$KX_GROUPS" >/dev/null 2>&1 || true
			s0="$(cpu_ticks "$spid")" b0="$(busy_ticks)"
			rep="$OUT/hs-$px-$key-$r.json"
			taskset -c "$CLIENT_CPU" timeout $((DURATION + 30)) "$CONNLOAD" handshakes --target "127.0.0.1:$PORT" --count "$COUNT" \
				--duration "$DURATION" --parallel "$PARALLEL" --groups "$KX_GROUPS" --sources 127.0.0.2-127.0.0.41 >"$rep" 2>"$rep.log" || true
			sleep 0.5
			s1="$(cpu_ticks "$spid")" b1="$(busy_ticks)"
			hs="$(jget "$rep" "r['handshakes']")" failed="$(jget "$rep" "r['failed']")"
			el="$(jget "$rep" "r['elapsed_s']")" rate="$(jget "$rep" "r['per_s']")" ccpu="$(jget "$rep" "r['client_cpu_s']")"
			scpu="$(calc "($s1 - $s0) / $CLK_TCK")"
			us=- use=- other=-
			if ((hs > 0)); then
				us="$(calc "int($scpu * 1e6 / $hs * 10 + 0.5) / 10")"
				use="$(calc "int($scpu / $el * 100 + 0.5) / 100")"
				other="$(calc "int((($b1 - $b0) / $CLK_TCK - $scpu - $ccpu) / ($el + 0.5) * 100 + 0.5) / 100")"
			fi
			printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$key" "$px" "$hs" "$failed" "$el" "$rate" "$scpu" "$us" "$use" "$ccpu" "$other" >>"$RUNS"
			log "round $r $key $px: $hs handshakes ($failed failed) in ${el}s = $rate/s; server $us us/handshake, $use core; client ${ccpu}s; other $other cores"
			stop_pid "$spid"
			sleep 1
		done
	done
done
{
	echo "TLS 1.3 full handshakes on one server CPU (groups $KX_GROUPS, $PARALLEL in parallel), sipedge $REV, $(date -u +%FT%TZ)"
	printf '%-4s %-9s %10s %14s %12s %10s\n' key server "hs_per_s" "server_us_per" "server_core" "failed"
	for key in $KEYS; do
		for px in "${PROXY_LIST[@]}"; do
			sel() { awk -F'\t' -v k="$key" -v p="$px" -v c="$1" 'NR > 1 && $2 == k && $3 == p && $c != "-" { print $c }' "$RUNS" | tr '\n' ' '; }
			[[ -n "$(sel 7)" ]] || continue
			printf '%-4s %-9s %10s %14s %12s %10s\n' "$key" "$px" "$(sel 7 | median)" "$(sel 9 | median)" "$(sel 10 | median)" \
				"$(awk -F'\t' -v k="$key" -v p="$px" 'NR > 1 && $2 == k && $3 == p { s += $5 } END { print s + 0 }' "$RUNS")"
		done
	done
} | tee "$OUT/table.txt"
exit 0
}
