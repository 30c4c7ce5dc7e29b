#!/usr/bin/env bash
# What TLS costs the tcp backend: `kvwire send` of one synthetic fp16 KV cache to `kvwire serve
# --discard` on loopback, plain tcp and tcp with --tls alternating in one run (same binary, same
# machine state), RUNS each. fp16 level: no codec work, so the difference is the encryption.
# Writes bench/results/transport_tls.md (OUT=... to change) with every run's numbers.
#
#   bench/tls_overhead.sh                      # build/bin/kvwire, 5 runs, 4 x 8192 x 8 x 128
#   KVWIRE_BIN=path/to/kvwire RUNS=7 LAYERS=8 bench/tls_overhead.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${KVWIRE_BIN:-build/bin/kvwire}
runs=${RUNS:-5}
layers=${LAYERS:-4}
out=${OUT:-bench/results/transport_tls.md}
[ -x "$bin" ] || { echo "tls_overhead: $bin not built (scripts/setup.sh)" >&2; exit 1; }
command -v openssl >/dev/null || { echo "tls_overhead: needs the openssl command" >&2; exit 1; }

tmp=$(mktemp -d)
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  rm -rf "$tmp"
}
pids=()
trap cleanup EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=bench \
  -addext subjectAltName=IP:127.0.0.1 -keyout "$tmp/server.key" -out "$tmp/server.pem" 2>/dev/null
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$tmp/key"
chmod 600 "$tmp/key"
echo "[tls_overhead] synthetic KV: $layers layers x 8192 tokens x 8 kv heads x 128, fp16" >&2
"$bin" synth --out "$tmp/kv.safetensors" --layers "$layers" --kv-heads 8 --head-dim 128 \
  --tokens 8192 >/dev/null

# One server per mode, each serving `runs` requests.
start_server() {  # mode flags...
  local mode=$1
  shift
  "$bin" serve --listen 127.0.0.1:0 --backend tcp --key-file "$tmp/key" --discard \
    --count "$runs" "$@" >"$tmp/serve_$mode.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do
    grep -q "listening on" "$tmp/serve_$mode.log" 2>/dev/null && break
    sleep 0.05
  done
  sed -n 's/.*listening on \([^ ]*\).*/\1/p' "$tmp/serve_$mode.log"
}
plain_addr=$(start_server plain)
tls_addr=$(start_server tls --tls --tls-cert "$tmp/server.pem" --tls-key "$tmp/server.key")

goodput() {  # json -> GB/s
  python3 -c 'import json,sys; print("%.3f" % (json.load(open(sys.argv[1]))["goodput_bytes_per_s"] / 1e9))' "$1"
}
plain=()
tls=()
for i in $(seq "$runs"); do
  "$bin" send --connect "$plain_addr" --backend tcp --key-file "$tmp/key" \
    --in "$tmp/kv.safetensors" --codec fp16 --json "$tmp/p$i.json" >/dev/null
  "$bin" send --connect "$tls_addr" --backend tcp --key-file "$tmp/key" --tls \
    --tls-ca "$tmp/server.pem" --in "$tmp/kv.safetensors" --codec fp16 --json "$tmp/t$i.json" \
    >/dev/null
  plain+=("$(goodput "$tmp/p$i.json")")
  tls+=("$(goodput "$tmp/t$i.json")")
  echo "[tls_overhead] run $i/$runs: plain ${plain[-1]} GB/s, tls ${tls[-1]} GB/s" >&2
done
wait "${pids[@]}"
pids=()

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mp=$(median "${plain[@]}")
mt=$(median "${tls[@]}")
ratio=$(python3 -c "print('%.2f' % ($mt / $mp))")
cipher=$(openssl ciphers -s -tls1_3 2>/dev/null | cut -d: -f1)
{
  echo "# tcp with and without TLS, loopback"
  echo
  echo "Command: \`$0\` (RUNS=$runs LAYERS=$layers KVWIRE_BIN=$bin)"
  echo
  echo "Machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), nproc $(nproc), $(date -u +%Y-%m-%dT%H:%M:%SZ); load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
  echo
  echo "One fp16 request of $layers x 8192 x 8 x 128 (K and V: $((layers * 8192 * 8 * 128 * 2 * 2 / 1048576)) MiB), \`kvwire send\` to \`kvwire serve --discard\`, whole-layer chunks, sessions with CRC and acknowledgements; goodput = raw bytes / send time (\`send --json\` goodput_bytes_per_s). The two modes alternate, run by run. TLS 1.3 with OpenSSL $(openssl version | cut -d' ' -f2) (first TLS 1.3 suite offered: $cipher), P-256 certificate, verified by the sender (--tls-ca)."
  echo
  echo "| mode | median GB/s | runs GB/s |"
  echo "|---|---:|---|"
  echo "| tcp | $mp | ${plain[*]} |"
  echo "| tcp + TLS | $mt | ${tls[*]} |"
  echo
  echo "TLS / plain: **$ratio**."
} >"$out"
cat "$out"
