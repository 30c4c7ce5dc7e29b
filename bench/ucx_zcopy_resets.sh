#!/usr/bin/env bash
# Does the ucx backend survive TCP resets with UCX's zero-copy sends on? (src/transport/ucx.cpp
# turns them off: UCX 1.13's tcp transport can complete a zero-copy send twice when the
# connection breaks under it, and the process aborts.) Runs `kvwire serve` in one network
# namespace and N x `kvwire send` (fp16, whole-layer chunks, a 16 MiB KV) from another, over a
# veth pair shaped to 1 Gbit/s, and resets the TCP connections (`ss -K`) 5-155 ms into each
# transfer; counts transfers that completed, failed cleanly (exit 1), hung (60 s) or died of a
# signal. Run it twice, with and without UCX_ZCOPY_THRESH=auto in the environment:
#   sudo bench/ucx_zcopy_resets.sh 200
#   sudo env UCX_ZCOPY_THRESH=auto bench/ucx_zcopy_resets.sh 200
# Needs root, iproute2 (ip, ss, tc with tbf). KVWIRE_BIN overrides the binary (default
# build/bin/kvwire). Namespaces and the working directory are removed at the end.
set -euo pipefail
n=${1:-200}
bin=${KVWIRE_BIN:-build/bin/kvwire}
[ "$(id -u)" = 0 ] || { echo "ucx_zcopy_resets.sh: needs root (network namespaces)" >&2; exit 2; }
[ -x "$bin" ] || { echo "ucx_zcopy_resets.sh: no $bin (build first, or set KVWIRE_BIN)" >&2; exit 2; }
bin=$(realpath "$bin")
a=kvzr$$a; b=kvzr$$b; va=kvzr$$x; vb=kvzr$$y
dir=$(mktemp -d)
serve=
cleanup() {
  set +e
  if [ -n "$serve" ]; then kill "$serve" 2>/dev/null; wait "$serve" 2>/dev/null; fi
  ip netns del "$a" 2>/dev/null || true
  ip netns del "$b" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
ip netns add "$a"; ip netns add "$b"
ip link add "$va" type veth peer name "$vb"
ip link set "$va" netns "$a"; ip link set "$vb" netns "$b"
ip -n "$a" addr add 10.77.1.1/24 dev "$va"; ip -n "$b" addr add 10.77.1.2/24 dev "$vb"
for ns in "$a" "$b"; do ip -n "$ns" link set lo up; done
ip -n "$a" link set "$va" up; ip -n "$b" link set "$vb" up
ip netns exec "$b" tc qdisc add dev "$vb" root tbf rate 1gbit burst 256kb latency 50ms
"$bin" synth --out "$dir/kv.safetensors" --layers 8 --kv-heads 4 --head-dim 64 --tokens 2048 \
  --seed 3 >/dev/null
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$dir/key"; echo >> "$dir/key"
chmod 600 "$dir/key"
ip netns exec "$a" env UCX_TLS=tcp UCX_NET_DEVICES="$va" "$bin" serve --listen 10.77.1.1:7090 \
  --backend ucx --key-file "$dir/key" --discard --stall-timeout-ms 3000 > "$dir/serve.log" 2>&1 &
serve=$!
sleep 1
ok=0; failed=0; died=0; hung=0; resumed=0
for i in $(seq 1 "$n"); do
  delay=$(( RANDOM % 150 + 5 ))
  ( sleep "0.$(printf %03d $delay)"; ip netns exec "$b" ss -K state established dst 10.77.1.1 \
      >/dev/null 2>&1 ) &
  killer=$!
  set +e
  ip netns exec "$b" env UCX_TLS=tcp UCX_NET_DEVICES="$vb" timeout 60 "$bin" send \
    --connect 10.77.1.1:7090 --backend ucx --key-file "$dir/key" --in "$dir/kv.safetensors" \
    --codec fp16 --request-id "$i" > "$dir/send.out" 2> "$dir/send.err"
  rc=$?
  set -e
  wait "$killer" || true
  grep -q "reconnect(s)" "$dir/send.out" && resumed=$((resumed + 1))
  case $rc in
    0) ok=$((ok + 1)) ;;
    1) failed=$((failed + 1)) ;;
    124) hung=$((hung + 1)) ;;
    *) died=$((died + 1))
       echo "transfer $i: exit $rc; $(grep -m1 -E 'Assertion|failed' "$dir/send.err" || true)"
       # UCX prints its own backtrace after a failed assertion: show its first frames.
       grep -A 12 -m1 'backtrace' "$dir/send.err" || true ;;
  esac
  printf '\r%d/%d' "$i" "$n" >&2
done
echo >&2
kill -0 "$serve" 2>/dev/null || echo "kvwire serve died: $(tail -3 "$dir/serve.log")"
echo "UCX_ZCOPY_THRESH=${UCX_ZCOPY_THRESH:-(kvwire default: inf)}: $n transfers, $resumed resumed" \
  "after a reset: $ok completed, $failed failed cleanly, $hung hung, $died died of a signal"
