#!/usr/bin/env bash
# Issue 17's comparison: Roomkit's classroom server, socketioxide and
# Socket.IO on Node.js under the same class, driven by the same load client
# (examples/loadgen). See peers/README.md.
#
#   bash peers/bench.sh                    # 2,000, 8,000 and 18,000 clients, 20 s each
#   SIZES="200" SECONDS=10 bash peers/bench.sh
#
# Environment: SIZES (client counts, default "2000 8000 18000"), SECONDS
# (the measured window of each run, default 20; BENCH_SECONDS is the same),
# SERVERS (default "roomkit socketioxide socketio-node"; "roomkit-shards" is
# the classroom server with SHARDS nodes in its process, default 2), BASE_PORT (default
# 18092: roomkit on it, socketioxide on +1, node on +2), OUT (where the logs
# go, default a new folder under /tmp), SKIP_BUILD=1 to use what is built.
#
# For each size, the servers run one after another, each in its own process;
# the load client runs with --server-pid, then the server is stopped. One
# markdown row per (size, server) is printed at the end.

# bash counts SECONDS up from the value it imported: read it first.
duration=${BENCH_SECONDS:-$SECONDS}
if ! [[ $duration =~ ^[0-9]+$ ]] || ((duration <= 0)); then
  duration=20
fi
set -euo pipefail
ulimit -n 20000 || echo "warning: could not raise the descriptor limit to 20,000 (it is $(ulimit -n))" >&2

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
sizes=${SIZES:-2000 8000 18000}
servers=${SERVERS:-roomkit socketioxide socketio-node}
base_port=${BASE_PORT:-18092}
out=${OUT:-$(mktemp -d /tmp/roomkit-bench.XXXXXX)}
mkdir -p "$out"
peer_target="$root/peers/socketioxide-classroom/target"

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
  echo "building (logs in $out/build.log)" >&2
  {
    (cd "$root" && cargo build --release -p examples --example classroom --example loadgen)
    cargo build --release --manifest-path "$root/peers/socketioxide-classroom/Cargo.toml"
    (cd "$root/peers/socketio-node" && npm ci --no-audit --no-fund)
  } >"$out/build.log" 2>&1 || {
    tail -30 "$out/build.log" >&2
    exit 1
  }
fi
loadgen="$root/target/release/examples/loadgen"
classroom="$root/target/release/examples/classroom"
peer="$peer_target/release/socketioxide-classroom"

# Starts server $1 on port $2, logging to $3; prints its pid.
start_server() {
  case $1 in
    roomkit) ROOMKIT_ADDR="127.0.0.1:$2" RUST_LOG=warn "$classroom" >"$3" 2>&1 & ;;
    roomkit-shards) ROOMKIT_SHARDS=${SHARDS:-2} ROOMKIT_ADDR="127.0.0.1:$2" RUST_LOG=warn "$classroom" >"$3" 2>&1 & ;;
    socketioxide) "$peer" --port "$2" >"$3" 2>&1 & ;;
    socketio-node) node "$root/peers/socketio-node/server.js" --port "$2" >"$3" 2>&1 & ;;
    *)
      echo "unknown server $1" >&2
      return 1
      ;;
  esac
  echo $!
}

protocol_of() {
  if [[ $1 == roomkit* ]]; then echo roomkit; else echo socketio; fi
}

# Waits until something accepts on port $1 while pid $2 lives (30 s at most).
wait_listening() {
  local i
  for ((i = 0; i < 300; i++)); do
    kill -0 "$2" 2>/dev/null || return 1
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
      # Still ours (not another process on the port while ours failed)?
      sleep 0.3
      kill -0 "$2" 2>/dev/null
      return
    fi
    sleep 0.1
  done
  return 1
}

# The value of key $1 in the summary line $2.
field() {
  local kv
  for kv in $2; do
    if [[ $kv == "$1="* ]]; then
      echo "${kv#*=}"
      return
    fi
  done
  echo "-"
}

rows=()
for n in $sizes; do
  for server in $servers; do
    case $server in
      roomkit) port=$base_port ;;
      socketioxide) port=$((base_port + 1)) ;;
      roomkit-shards) port=$((base_port + 3)) ;;
      *) port=$((base_port + 2)) ;;
    esac
    log="$out/$server-$n"
    echo "== $n clients, $server on 127.0.0.1:$port (logs $log.*)" >&2
    pid=$(start_server "$server" "$port" "$log.server.log")
    if ! wait_listening "$port" "$pid"; then
      echo "$server did not start listening on $port:" >&2
      tail -5 "$log.server.log" >&2 || true
      kill "$pid" 2>/dev/null || true
      rows+=("| $n | $server | did not start | | | | | | |")
      continue
    fi
    status=0
    timeout $((duration + 900)) "$loadgen" --ws "$n" --server "127.0.0.1:$port" --protocol "$(protocol_of "$server")" \
      --server-pid "$pid" --seconds "$duration" >"$log.loadgen.log" 2>&1 || status=$?
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    summary=$(grep '^summary ' "$log.loadgen.log" | tail -1 || true)
    # socketioxide counts emits its full per-socket buffers refused.
    grep -h 'emits failed' "$log.server.log" | tail -1 >&2 || true
    if [[ $status != 0 || -z $summary ]]; then
      echo "the load client failed (exit $status):" >&2
      tail -5 "$log.loadgen.log" >&2 || true
      rows+=("| $n | $server | load client failed (exit $status, $log.loadgen.log) | | | | | | |")
    else
      grep -E '^(after|  teacher|  chat|teacher messages|server )' "$log.loadgen.log" >&2 || true
      rows+=("| $n | $server | $(field teacher_p50_ms "$summary") / $(field teacher_p99_ms "$summary") | $(field chat_p50_ms "$summary") / $(field chat_p99_ms "$summary") | $(field server_cpu_s "$summary") ($(field server_sys_s "$summary")) | $(field server_writes "$summary") | $(field server_rss_mib "$summary") / $(field server_hwm_mib "$summary") | $(field teacher_deliveries "$summary") | $(field teacher_lost "$summary") |")
    fi
    sleep 2
  done
done

echo
echo "Window: $duration s per run; chat 1,000 lines/s, teacher 10 messages/s; node $(node --version); logs in $out."
echo
echo "| clients | server | teacher p50 / p99 ms | chat p50 / p99 ms | server CPU s (kernel) | server write(v) calls | server RSS / peak MiB | teacher deliveries | lost |"
echo "|---:|---|---:|---:|---:|---:|---:|---:|---:|"
printf '%s\n' "${rows[@]}"
