#!/usr/bin/env bash
# One class of 60,000 members over real websockets on one machine: the
# cluster example's nodes (own NATS and Redis), the members spread over
# them, and the load in several processes (this machine allows 20,000
# descriptors a process). One process speaks: its teacher says
# TEACHER_RATE messages a second for SECONDS (no chat), and its SPEAKER
# clients listen too; the other processes only listen and count every
# teacher message they see.
# Prints each process's figures, then every teacher message at every
# member (deliveries, lost), latency per process and memory per member
# (the nodes' RSS over the members).
#
#   bash examples/cluster/big-class.sh                  # 60,000 over 4 nodes
#   MEMBERS=20000 NODES=2 bash examples/cluster/big-class.sh
#
# Environment: MEMBERS (60000), NODES (4), PER_PROCESS (clients a load
# process, 15000), SPEAKER (clients of the speaking process, 2000),
# TEACHER_RATE (2), BENCH_SECONDS (the speaking window, 20), LISTEN_EXTRA
# (the longest the listeners listen past their entry, 1800 s: they stop
# once the speaker is done, and its messages had 10 s more to arrive),
# BASE_PORT (7301), OUT (logs; a new folder under /tmp), SKIP_BUILD=1.
duration=${BENCH_SECONDS:-20}
set -euo pipefail
ulimit -n 20000 || echo "warning: the descriptor limit is $(ulimit -n)" >&2

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
members=${MEMBERS:-60000}
nodes=${NODES:-4}
per_process=${PER_PROCESS:-15000}
speaker=${SPEAKER:-2000}
rate=${TEACHER_RATE:-2}
base_port=${BASE_PORT:-7301}
out=${OUT:-$(mktemp -d /tmp/roomkit-big-class.XXXXXX)}
mkdir -p "$out"
spoken="$out/spoken"
rm -f "$spoken"

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
  (cd "$root" && cargo build --release -p examples --example cluster --example loadgen) >"$out/build.log" 2>&1 ||
    { tail -30 "$out/build.log" >&2; exit 1; }
fi
bin="$root/target/release/examples"

# Field $2 of the load client's summary line in log $1.
field() { grep "^summary" "$1" | grep -o "$2=[^ ]*" | cut -d= -f2; }

cleanup() {
  [[ -n ${cluster_pid:-} ]] && kill -INT "$cluster_pid" 2>/dev/null || true
  for p in "${listeners[@]:-}"; do [[ -n $p ]] && kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
listeners=()

echo "starting $nodes nodes (logs in $out)" >&2
RUST_LOG=warn "$bin/cluster" --nodes "$nodes" --base-port "$base_port" >"$out/cluster.log" 2>&1 &
cluster_pid=$!
for _ in $(seq 600); do
  grep -q "nodes up in" "$out/cluster.log" && break
  kill -0 "$cluster_pid" 2>/dev/null || { cat "$out/cluster.log" >&2; exit 1; }
  sleep 0.1
done
servers=$(grep -o "nodes up in [0-9.]* s: .*" "$out/cluster.log" | sed 's/.*s: //')
echo "nodes: $servers" >&2

# The listeners: everything but the speaker's share, PER_PROCESS at most
# each. They listen long enough for everyone to connect and the speaker
# to finish.
listening=$((members - speaker))
first=$speaker
i=0
while ((listening > 0)); do
  n=$((listening < per_process ? listening : per_process))
  "$bin/loadgen" --ws "$n" --listen --first "$first" --server "$servers" --until "$spoken" \
    --seconds $((duration + ${LISTEN_EXTRA:-1800})) >"$out/listener-$i.log" 2>&1 &
  listeners+=($!)
  first=$((first + n))
  listening=$((listening - n))
  i=$((i + 1))
done
for ((k = 0; k < i; k++)); do
  until grep -q "websocket clients connected" "$out/listener-$k.log"; do
    kill -0 "${listeners[$k]}" 2>/dev/null || { tail -20 "$out/listener-$k.log" >&2; exit 1; }
    sleep 1
  done
  grep "websocket clients connected" "$out/listener-$k.log" >&2
done

echo "every listener connected; the teacher speaks" >&2
"$bin/loadgen" --ws "$speaker" --server "$servers" --seconds "$duration" --teacher-rate "$rate" --chat-rate 0 \
  >"$out/speaker.log" 2>&1
touch "$spoken"
grep -E "connected|teacher  |teacher messages" "$out/speaker.log" >&2
rss_kib=0
for pid in $(pgrep -f "examples/cluster --node" || true); do
  kib=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
  rss_kib=$((rss_kib + kib))
done
for p in "${listeners[@]}"; do wait "$p" || true; done
listeners=()

sent=$(field "$out/speaker.log" teacher_sent)
deliveries=$(field "$out/speaker.log" teacher_deliveries)
total=$speaker
echo
echo "| process | clients | teacher p50 / p99 ms | teacher messages seen | deliveries |"
echo "|---|---:|---:|---:|---:|"
row() {
  local name=$1 log=$2
  echo "| $name | $(field "$log" clients) | $(field "$log" teacher_p50_ms) / $(field "$log" teacher_p99_ms) | $(field "$log" teacher_sent) | $(field "$log" teacher_deliveries) |"
}
row speaker "$out/speaker.log"
for ((k = 0; k < i; k++)); do
  row "listener $k" "$out/listener-$k.log"
  deliveries=$((deliveries + $(field "$out/listener-$k.log" teacher_deliveries)))
  total=$((total + $(field "$out/listener-$k.log" clients)))
done
expected=$((sent * total))
echo
echo "$total members on $nodes nodes: $sent teacher messages, $deliveries of $expected deliveries, $((expected - deliveries)) lost"
echo "nodes' RSS: $((rss_kib / 1024)) MiB, $((rss_kib * 1024 / total)) B per member"
