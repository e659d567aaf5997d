#!/usr/bin/env bash
# benches/e2e/idle_conns.sh: memory per idle TCP and TLS connection, sipedge vs Kamailio.
#
# Usage: benches/e2e/idle_conns.sh [options]
#   --counts "10000 100000"  connections per measurement (default)
#   --transports "tcp tls"   (default both)
#   --proxies LIST           comma list of kamailio,sipedge (default both)
#   --rounds N               rounds, the servers taking turns (default 2); medians reported
#   --sources A-B            client source addresses (default 127.0.0.2-127.0.0.201)
#   --port P                 server TCP port; TLS is P+1 (default 16160)
#   --server-cpu C --client-cpu C   (default 1, 0)
#   --no-build
#   -h | --help
#
# For each server, transport and count: the server starts (sipedge: one shard,
# [tcp] max_connections / max_per_ip raised, ECDSA P-256 certificate; Kamailio: the
# stream config kamailio/kam_stateful_stream.cfg with tcp_children=1, tlsf,
# tcp_max_connections / tls_max_connections / open_files_limit = count + 1000, -m sized
# for the count), settles, and the PSS and RSS of ALL its processes are summed from
# /proc/PID/smaps_rollup (Kamailio: also `kamcmd core.shmmem` used). Then tools/sipload's
# `connload idle` opens the connections from many 127.0.0.x source addresses (TLS: the
# TLS 1.3 handshake completes; the client then keeps only the socket) and holds them
# idle; 3 s after the last one is open the figures are read again. Reported:
# (after - before) / connections the server accepted (established at its port minus
# those still in its listener's accept queue), in KiB: PSS (the headline: it counts Kamailio's
# shared memory once), RSS, and Kamailio's shm used. Kernel socket memory is not counted
# (the same for both servers).
# Every count needs that many file descriptors in the server process: the script raises
# `ulimit -n` (to 1048576, else to the hard limit) and skips, with a note, any count
# the hard limit cannot hold (on a host without CAP_SYS_RESOURCE the hard limit stays).
# Results: results/idle-<stamp>/{runs.tsv,table.txt}; every process started is stopped
# on exit (trap). Loopback only.
set -euo pipefail
ulimit -c 0 # no core dumps (Kamailio aborts on SIGTERM with TLS loaded; dumping its shm takes a minute)
{
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
COUNTS="10000 100000" TRANSPORTS="tcp tls" PROXIES="kamailio,sipedge" ROUNDS=2
SOURCES="127.0.0.2-127.0.0.201" PORT=16160 SERVER_CPU=1 CLIENT_CPU=0 BUILD=1
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "idle_conns.sh: $*" >&2; exit 2; }
while (($#)); do
	case "$1" in
	--counts) COUNTS="$2"; shift ;;
	--transports) TRANSPORTS="$2"; shift ;;
	--proxies) PROXIES="$2"; shift ;;
	--rounds) ROUNDS="$2"; shift ;;
	--sources) SOURCES="$2"; shift ;;
	--port) PORT="$2"; shift ;;
	--server-cpu) SERVER_CPU="$2"; shift ;;
	--client-cpu) CLIENT_CPU="$2"; shift ;;
	--no-build) BUILD=0 ;;
	-h | --help) usage; exit 0 ;;
	*) die "unknown option $1 (see --help)" ;;
	esac
	shift
done
TLS_PORT=$((PORT + 1))
OUT="$HERE/results/idle-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
ln -sfn "$(basename "$OUT")" "$HERE/results/latest-idle"
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
mem_kb() { # mem_kb PID: "PSS RSS" in kB, summed over the process tree
	local pss=0 rss=0 p a b
	for p in $(tree_pids "$1"); do
		read -r a b < <(awk '/^Pss:/ { p = $2 } /^Rss:/ { r = $2 } END { print p + 0, r + 0 }' "/proc/$p/smaps_rollup" 2>/dev/null || echo "0 0")
		pss=$((pss + a)) rss=$((rss + b))
	done
	echo "$pss $rss"
}
tcp_listening() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }
wait_listen() { for _ in $(seq 100); do tcp_listening "$1" && return 0; kill -0 "$2" 2>/dev/null || return 1; sleep 0.1; done; return 1; }
calc() { awk "BEGIN { printf \"%s\", $* }"; }
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print a[(NR + 1) / 2]; else printf "%.2f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)"
NOFILE="$(ulimit -n)"
log "open files limit: $NOFILE"

SIPEDGE="$ROOT/target/release/sipedge" CONNLOAD="$ROOT/target/release/connload"
if ((BUILD)); then
	(cd "$ROOT" && nice -n 10 cargo build --release -p sipedge -p sipload) >"$OUT/cargo-build.log" 2>&1 || die "build failed"
fi
[[ -x "$SIPEDGE" && -x "$CONNLOAD" ]] || die "need $SIPEDGE and $CONNLOAD (cargo build --release)"
cp "$SIPEDGE" "$OUT/sipedge" && SIPEDGE="$OUT/sipedge"
REV="$(cd "$ROOT" && git describe --always --dirty 2>/dev/null || echo '?')"
"$HERE/certs.sh" "$OUT/certs"
CERT="$OUT/certs/ec.crt" KEY="$OUT/certs/ec.key" CA="$OUT/certs/ca.crt"
KAM_MPATH="$(dirname "$(find /usr/lib /usr/local/lib /usr/lib64 -path '*kamailio/modules/sl.so' 2>/dev/null | head -1)")"
KAM_CFG="$OUT/kam_stateful_stream.cfg" KAM_CTL="$OUT/kam-ctl"
sed -e "s#^mpath=.*#mpath=\"$KAM_MPATH/\"#" -e "s#unix:/tmp/kamailio_stream_ctl#unix:$KAM_CTL#" \
	-e "s/127\.0\.0\.1:15062/127.0.0.1:$PORT/g" -e "s/127\.0\.0\.1:15063/127.0.0.1:$TLS_PORT/g" \
	"$HERE/kamailio/kam_stateful_stream.cfg" >"$KAM_CFG"
kam_shm_used() { kamcmd -s "unix:$KAM_CTL" core.shmmem 2>/dev/null | awk '$1 == "used:" { print $2; exit }' || echo 0; }

RUNS="$OUT/runs.tsv"
printf 'round\ttransport\tcount\tserver\taccepted\tpss_kib_per_conn\trss_kib_per_conn\tshm_kib_per_conn\tpss_before_kb\tpss_after_kb\n' >"$RUNS"
IFS=',' read -r -a PROXY_LIST <<<"$PROXIES"
SKIPPED=""
log "output in $OUT (sipedge $REV)"
for ((r = 1; r <= ROUNDS; r++)); do
	for tr in $TRANSPORTS; do
		for n in $COUNTS; do
			if ((n + 1000 > NOFILE)); then
				[[ "$SKIPPED" == *" $n "* ]] || { SKIPPED+=" $n "; log "skipping $n connections: the open files limit is $NOFILE (hard limit $(ulimit -Hn)); the server needs $((n + 1000))"; }
				continue
			fi
			for px in "${PROXY_LIST[@]}"; do
				port="$PORT"
				[[ "$tr" == tls ]] && port="$TLS_PORT"
				tcp_listening "$PORT" && die "port $PORT in use"
				case "$px" in
				kamailio)
					a=(-A "MAX_CONNS=$((n + 1000))")
					[[ "$tr" == tls ]] && a+=(-A WITH_TLS -A "TLS_CERT=\"$CERT\"" -A "TLS_KEY=\"$KEY\"")
					per=16
					[[ "$tr" == tls ]] && per=216 # KiB per connection reserved: published TLS figures reach 130
					shm=$((256 + n * per / 1024))
					(exec taskset -c "$SERVER_CPU" kamailio -f "$KAM_CFG" -DD -E -m "$shm" -n 1 -x tlsf -X tlsf "${a[@]}") >"$OUT/kamailio-$tr-$n-$r.log" 2>&1 &
					;;
				sipedge)
					printf '[tls]\ncert = "%s"\nkey = "%s"\n\n[tcp]\nmax_connections = %d\nmax_per_ip = %d\nidle_timeout = 3600\n' \
						"$CERT" "$KEY" $((n + 1000)) $((n + 1000)) >"$OUT/sipedge-idle.toml"
					rm -rf "$OUT/sipedge-data"
					(exec taskset -c "$SERVER_CPU" "$SIPEDGE" run --shards 1 --listen "tcp:127.0.0.1:$PORT" --listen "tls:127.0.0.1:$TLS_PORT" \
						--config "$OUT/sipedge-idle.toml" --data-dir "$OUT/sipedge-data") >"$OUT/sipedge-$tr-$n-$r.log" 2>&1 &
					;;
				esac
				spid=$!
				PIDS+=("$spid")
				if ! wait_listen "$port" "$spid"; then
					log "$px did not come up ($OUT/$px-$tr-$n-$r.log)"
					stop_pid "$spid"
					continue
				fi
				sleep 2
				read -r pss0 rss0 < <(mem_kb "$spid")
				shm0=0
				[[ "$px" == kamailio ]] && shm0="$(kam_shm_used)"
				tlsarg=()
				[[ "$tr" == tls ]] && tlsarg=(--tls --ca "$CA")
				ready="$OUT/connload-$px-$tr-$n-$r.out"
				(exec taskset -c "$CLIENT_CPU" timeout 900 "$CONNLOAD" idle --target "127.0.0.1:$port" "${tlsarg[@]}" --count "$n" \
					--sources "$SOURCES" --parallel 256 --hold 600 --open-timeout 300) >"$ready" 2>"$ready.log" &
				cpid=$!
				PIDS+=("$cpid")
				for _ in $(seq 3200); do grep -q READY "$ready" 2>/dev/null && break; kill -0 "$cpid" 2>/dev/null || break; sleep 0.1; done
				open="$(awk '/READY/ { print $2 }' "$ready" 2>/dev/null)"
				open="${open:-0}"
				sleep 3
				read -r pss1 rss1 < <(mem_kb "$spid")
				shm1=0
				[[ "$px" == kamailio ]] && shm1="$(kam_shm_used)"
				estab="$(ss -Htn state established "( sport = :$port )" 2>/dev/null | wc -l)"
				# connections the server has not accept()ed yet wait in the listener's queue (Recv-Q)
				accq="$(ss -Hltn "sport = :$port" 2>/dev/null | awk '{ print $2 + 0; exit }')"
				accepted=$((estab - ${accq:-0}))
				if ((accepted > 0)); then
					pc="$(calc "int(($pss1 - $pss0) / $accepted * 100 + 0.5) / 100")"
					rc="$(calc "int(($rss1 - $rss0) / $accepted * 100 + 0.5) / 100")"
					sc="$(calc "int(($shm1 - $shm0) / 1024 / $accepted * 100 + 0.5) / 100")"
				else
					pc=- rc=- sc=-
				fi
				printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$tr" "$n" "$px" "$accepted" "$pc" "$rc" "$sc" "$pss0" "$pss1" >>"$RUNS"
				log "round $r $tr $n $px: $open open, $estab established at the server port, $accepted accepted (${accq:-0} in the accept queue), PSS +$pc KiB/conn, RSS +$rc KiB/conn, shm +$sc KiB/conn ($(cat "$ready.log" 2>/dev/null | tail -1))"
				stop_pid "$cpid"
				stop_pid "$spid"
				sleep 1
			done
		done
	done
done
{
	echo "Memory per idle connection (KiB; PSS and RSS summed over all server processes, after - before, / connections accepted), sipedge $REV, $(date -u +%FT%TZ)"
	printf '%-5s %7s %-9s %9s %9s %9s %9s\n' tr count server accepted pss rss shm
	for tr in $TRANSPORTS; do
		for n in $COUNTS; do
			for px in "${PROXY_LIST[@]}"; do
				sel() { awk -F'\t' -v t="$tr" -v n="$n" -v p="$px" -v c="$1" 'NR > 1 && $2 == t && $3 == n && $4 == p && $c != "-" { print $c }' "$RUNS" | tr '\n' ' '; }
				[[ -n "$(sel 5)" ]] || continue
				printf '%-5s %7s %-9s %9s %9s %9s %9s\n' "$tr" "$n" "$px" "$(sel 5 | median)" "$(sel 6 | median)" "$(sel 7 | median)" "$(sel 8 | median)"
			done
		done
	done
	[[ -z "$SKIPPED" ]] || echo "not measured:$SKIPPED connections (open files limit $NOFILE, hard limit $(ulimit -Hn))"
} | tee "$OUT/table.txt"
exit 0
}
