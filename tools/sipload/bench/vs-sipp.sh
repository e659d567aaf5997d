#!/usr/bin/env bash
# sipload vs SIPp, back to back over loopback (no proxy): the UAS pinned to
# one CPU, the UAC to another, the same call flow (INVITE/180/200/ACK/BYE/200)
# at the same rate. Prints, per generator and rate: calls ok/failed, the
# achieved rate, and the CPU each side spent per call (utime+stime from /proc
# and the shell's `times`, divided by completed calls).
#
#   tools/sipload/bench/vs-sipp.sh [--rates "5000 10000"] [--secs 10] [--gens "sipload sipp"]
#                                  [--uac-cpu 0] [--uas-cpu 1] [--sipload PATH]
# Every run is bounded by its count (rate x secs) and a timeout.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../../.." && pwd)"
RATES="5000 10000" SECS=10 GENS="sipload sipp" UAC_CPU=0 UAS_CPU=1
SIPLOAD="$ROOT/target/release/sipload" PORT=15090
while (($#)); do
	case "$1" in
	--rates) RATES="$2"; shift ;;
	--secs) SECS="$2"; shift ;;
	--gens) GENS="$2"; shift ;;
	--uac-cpu) UAC_CPU="$2"; shift ;;
	--uas-cpu) UAS_CPU="$2"; shift ;;
	--sipload) SIPLOAD="$2"; shift ;;
	*) echo "unknown option $1" >&2; exit 2 ;;
	esac
	shift
done
command -v sipp >/dev/null || { echo "sipp missing: apt-get install sip-tester" >&2; exit 2; }
[[ -x "$SIPLOAD" ]] || (cd "$ROOT" && cargo build --release -p sipload)
TCK="$(getconf CLK_TCK)"
TMP="$(mktemp -d)"
UAS=""
trap '[[ -n "$UAS" ]] && kill "$UAS" 2>/dev/null; rm -rf "$TMP"' EXIT

ticks() { local l; l="$(cat "/proc/$1/stat")"; l="${l##*) }"; read -r -a f <<<"$l"; echo $((f[11] + f[12])); }
wait_port() { for _ in $(seq 100); do ss -Hlun "sport = :$1" | grep -q . && return 0; sleep 0.05; done; return 1; }
# CPU of the waited-for children of the calling (sub)shell: `times` must not
# run in a pipeline (that forks, and a fork has no children yet).
child_cpu() { times >"$TMP/times"; awk 'NR == 2 { gsub(/[ms]/, " "); split($0, a, " "); print a[1] * 60 + a[2] + a[3] * 60 + a[4] }' "$TMP/times"; }

printf '%-8s %7s %9s %7s %9s %10s %10s %10s\n' gen rate ok failed achieved uac_us/call uas_us/call sum_us/call
for gen in $GENS; do
	for rate in $RATES; do
		count=$((rate * SECS))
		bound=$((SECS * 3 + 40))
		if [[ $gen == sipload ]]; then
			taskset -c "$UAS_CPU" "$SIPLOAD" --role uas --uas-listen "127.0.0.1:$PORT" --duration "$((bound + 10))" --quiet --json >"$TMP/uas.json" 2>"$TMP/uas.log" &
		else
			taskset -c "$UAS_CPU" sipp -sn uas -i 127.0.0.1 -p "$PORT" -nostdin -buff_size 8388608 -timeout "$((bound + 10))" >"$TMP/uas.log" 2>&1 &
		fi
		UAS=$!
		wait_port "$PORT"
		u0="$(ticks "$UAS")"
		t0="$(date +%s.%N)"
		if [[ $gen == sipload ]]; then
			uac_cpu="$( (timeout "$bound" taskset -c "$UAC_CPU" "$SIPLOAD" --role uac --target "127.0.0.1:$PORT" \
				--rate "$rate" --count "$count" --duration "$((SECS * 2))" --json --quiet >"$TMP/uac.json" 2>/dev/null || true); child_cpu)"
			read -r ok failed achieved < <(python3 -c 'import json,sys; u=json.load(open(sys.argv[1]))["uac"]; print(u["succeeded"], u["failed"], u["achieved_rate"])' "$TMP/uac.json")
		else
			uac_cpu="$( (cd "$TMP" && timeout "$bound" taskset -c "$UAC_CPU" sipp -sn uac -i 127.0.0.1 -p $((PORT + 1)) -r "$rate" -m "$count" \
				-nostdin -buff_size 8388608 -timeout "$bound" -timeout_error -trace_stat -stf stat.csv -fd 1 "127.0.0.1:$PORT" >uac.log 2>&1 || true); child_cpu)"
			read -r ok failed < <(awk -F';' 'NR == 1 { for (i = 1; i <= NF; i++) h[$i] = i; next } { l = $0 }
				END { split(l, v, ";"); print v[h["SuccessfulCall(C)"]] + 0, v[h["FailedCall(C)"]] + 0 }' "$TMP/stat.csv")
			rm -f "$TMP/stat.csv"
			achieved="$(python3 -c "print(round($ok / ($(date +%s.%N) - $t0), 1))")"
		fi
		u1="$(ticks "$UAS")"
		kill "$UAS" 2>/dev/null || true
		wait "$UAS" 2>/dev/null || true
		UAS=""
		python3 - "$gen" "$rate" "$ok" "$failed" "$achieved" "$uac_cpu" "$u0" "$u1" "$TCK" <<'PY'
import sys
gen, rate, ok, failed, achieved, uac, u0, u1, tck = sys.argv[1:]
ok = max(int(ok), 1)
uac_us = float(uac) * 1e6 / ok
uas_us = (int(u1) - int(u0)) / int(tck) * 1e6 / ok
print(f"{gen:<8} {rate:>7} {ok:>9} {failed:>7} {float(achieved):>9.0f} {uac_us:>10.1f} {uas_us:>10.1f} {uac_us + uas_us:>10.1f}")
PY
		sleep 1
	done
done
