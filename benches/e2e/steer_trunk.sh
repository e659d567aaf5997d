#!/usr/bin/env bash
# benches/e2e/steer_trunk.sh — what `[socket] steer = "source"` costs a trunk
# that arrives from one address (issue 14). Not in CI.
#
#   benches/e2e/steer_trunk.sh [RATE] [SOCKETS] [MODES]
#     RATE     calls/s offered (default 18000)
#     SOCKETS  UAC sockets, all on 127.0.0.1 (sipload --threads; default 4)
#     MODES    steering modes to run in turn (default "source hash")
#
# A two-shard stateful sipedge relays calls from sipload (one source
# address, SOCKETS source ports) to a sipload UAS, 20 s per mode. Prints each
# shard thread's CPU (utime+stime from /proc/PID/task) and what the UAC saw:
# under "source" every call lands on one shard, under "hash" the kernel
# spreads the sockets (a 4-tuple hash: with few sockets they may still share
# a shard). Loopback only; every process bounded by --duration and killed.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
S="$ROOT/target/release/sipedge" L="$ROOT/target/release/sipload"
RATE="${1:-18000}" SOCKETS="${2:-4}" MODES="${3:-source hash}"
[[ -x "$S" && -x "$L" ]] || { echo "build first: cargo build --release && cargo build --release -p sipload" >&2; exit 2; }
command -v jq >/dev/null || { echo "jq is needed" >&2; exit 2; }
free_port() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
for mode in $MODES; do
	d="$(mktemp -d)"
	P="$(free_port)" U="$(free_port)"
	printf '[socket]\nsteer = "%s"\n' "$mode" >"$d/edge.toml"
	"$S" run --shards 2 --config "$d/edge.toml" --listen "udp:127.0.0.1:$P" \
		--upstream "sip:127.0.0.1:$U" --data-dir "$d/data" >"$d/log" 2>&1 &
	E=$!
	sleep 0.7
	timeout 60 "$L" --role uas --scenario call --uas-listen "127.0.0.1:$U" --duration 40s --quiet >/dev/null 2>&1 &
	UA=$!
	sleep 0.3
	ticks() { for t in /proc/"$E"/task/*; do awk -v n="$(cat "$t/comm")" '{ print n, $14 + $15 }' "$t/stat"; done | grep shard | sort; }
	before="$(ticks)"
	timeout 60 "$L" --role uac --scenario call --target "127.0.0.1:$P" --rate "$RATE" --threads "$SOCKETS" \
		--duration 20s --json --quiet >"$d/uac.json" 2>/dev/null || true
	after="$(ticks)"
	echo "== steer = \"$mode\": $RATE calls/s offered from 127.0.0.1 over $SOCKETS sockets"
	paste <(echo "$before") <(echo "$after") | awk -v hz="$(getconf CLK_TCK)" '{ printf "  %s CPU %.0f %%\n", $1, ($4 - $2) / hz / 20 * 100 }'
	jq -r '.uac | "  calls \(.attempted), ok \(.succeeded), failed \(.failed), carried \(.achieved_rate)/s, setup p50 \(.latency_us.call_setup.p50) µs p99 \(.latency_us.call_setup.p99) µs"' "$d/uac.json"
	kill "$E" "$UA" 2>/dev/null || true
	wait 2>/dev/null || true
	rm -rf "$d"
done
