#!/usr/bin/env bash
# A fp16 KV handoff as a user runs it: `kvwire serve --discard` and `kvwire send` as two
# processes on loopback, a fresh serve per backend, so the first request (fresh buffers, fresh
# KV cache, first connection) and the later ones (steady state) are reported apart; each backend
# twice: a serve that allocates its KV cache when the first request comes, and one started with
# --preallocate (the cache exists before the first request, as an engine's KV pool does); beside the
# backend alone (`kvwire bench transport --no-session` at the chunk's size: one connection,
# messages one way, pooled buffers) and, for ucx, ucx_perftest -t ucp_am_bw as is and with -e,
# all in the same run.
#
# Timed per request, from `kvwire send --json`: load_s (mapping and checking the dump), send_s
# (Open() until the receiver confirmed every chunk written into its KV cache: KV-ready), and
# the whole `kvwire send` process (wall_s). Goodput = fp16 bytes of the KV / send_s.
#
# Usage: bench/cli_transfer.sh
# Environment: KVWIRE (default build/bin/kvwire), MIB (512: fp16 MiB of KV, 32 layers x 8 kv heads
# x 128, MIB x 8 tokens), BACKENDS (default: tcp, and ucx when the binary has it), REQUESTS (6:
# the first + 5 steady), CHUNK_TOKENS (0: one chunk per layer and K|V), RAW_REPEAT (5), MODES
# ("fresh preallocate": the serve variants to run), WORK
# (scratch, default build/cli_transfer), OUT (bench/results/cli_transfer: OUT.json and OUT.md).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
KVWIRE=${KVWIRE:-$ROOT/build/bin/kvwire}
MIB=${MIB:-512}
REQUESTS=${REQUESTS:-6}
CHUNK_TOKENS=${CHUNK_TOKENS:-0}
RAW_REPEAT=${RAW_REPEAT:-5}
MODES=${MODES:-fresh preallocate}
WORK=${WORK:-$ROOT/build/cli_transfer}
OUT=${OUT:-$ROOT/bench/results/cli_transfer}
PY=/usr/bin/python3
SCRIPT=cli_transfer.sh
source "$ROOT/bench/lib.sh"
need_kvwire
if [ -z "${BACKENDS:-}" ]; then
  BACKENDS=tcp
  "$KVWIRE" send --help 2>&1 | grep -q "ucx" && BACKENDS="tcp ucx"
fi
[ "$REQUESTS" -ge 2 ] || die "REQUESTS must be >= 2 (the first request and at least one more)"
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)

LAYERS=32 HEADS=8 DIM=128
TOKENS=$((MIB * 8))  # 32 x 2 x 8 x 128 x 2 bytes = 128 KiB per token
KV=$WORK/kv-${MIB}mib.safetensors
if [ ! -s "$KV" ]; then
  echo "writing a synthetic fp16 KV dump of $MIB MiB..."
  "$KVWIRE" synth --out "$KV" --layers $LAYERS --kv-heads $HEADS --head-dim $DIM --tokens $TOKENS \
    --threads "$(nproc)" >/dev/null
fi
chunk_tokens=$CHUNK_TOKENS
[ "$chunk_tokens" -gt 0 ] || chunk_tokens=$TOKENS
[ "$chunk_tokens" -le "$TOKENS" ] || chunk_tokens=$TOKENS
chunk_bytes=$((chunk_tokens * HEADS * DIM * 2))
raw_size=$((chunk_bytes >> 10))K
new_key "$WORK/key"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
cat /dev/null >"$WORK/requests.jsonl"

SERVE_PID=
cleanup() { [ -n "$SERVE_PID" ] && kill "$SERVE_PID" 2>/dev/null; wait 2>/dev/null || true; }
trap cleanup EXIT

port=$((47500 + $$ % 400))
for backend in $BACKENDS; do
  for mode in $MODES; do
  port=$((port + 1))
  log=$WORK/serve-$backend-$mode.log
  prealloc=()
  [ "$mode" = preallocate ] && prealloc=(--preallocate "${LAYERS}x${TOKENS}x${HEADS}x${DIM}:f16")
  "$KVWIRE" serve --listen 127.0.0.1:$port --backend "$backend" --key-file "$WORK/key" --discard \
    "${prealloc[@]}" >"$log" 2>&1 &
  SERVE_PID=$!
  for _ in $(seq 400); do grep -q "listening on" "$log" && break; sleep 0.05; done
  grep -q "listening on" "$log" || die "serve ($backend) did not start: $(cat "$log")"
  for r in $(seq "$REQUESTS"); do
    json=$WORK/send-$backend-$mode-$r.json
    t0=$(date +%s.%N)
    "$KVWIRE" send --connect 127.0.0.1:$port --backend "$backend" --key-file "$WORK/key" \
      --in "$KV" --codec fp16 --chunk-tokens "$chunk_tokens" --request-id "$r" --json "$json" \
      >"$WORK/send-$backend-$mode-$r.log" 2>&1 || die "send $backend ($mode) #$r failed: $(cat "$WORK/send-$backend-$mode-$r.log")"
    t1=$(date +%s.%N)
    $PY -c 'import json, sys
j = json.load(open(sys.argv[1]))
print(json.dumps({"backend": sys.argv[2], "mode": sys.argv[5], "request": int(sys.argv[3]), "wall_s": float(sys.argv[4]),
                  "load_s": j["load_s"], "send_s": j["send_s"], "connect_s": j["connect_s"]}))' \
      "$json" "$backend" "$r" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" "$mode" >>"$WORK/requests.jsonl"
  done
  kill "$SERVE_PID" 2>/dev/null || true
  wait "$SERVE_PID" 2>/dev/null || true
  SERVE_PID=
  done
  echo "raw $backend at $raw_size..."
  perftest=(--perftest none)
  [ "$backend" = ucx ] && perftest=()
  "$KVWIRE" bench transport --sizes "$raw_size" --backends "$backend" --no-session \
    --repeat "$RAW_REPEAT" --mib "$MIB" "${perftest[@]}" --out-dir "$WORK/raw-$backend" \
    >"$WORK/raw-$backend.log" 2>&1 || die "bench transport $backend failed: $(tail -5 "$WORK/raw-$backend.log")"
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

mkdir -p "$(dirname "$OUT")"
$PY - "$WORK" "$OUT" "$MIB" "$chunk_tokens" "$chunk_bytes" "$BACKENDS" "$REQUESTS" \
  "$load_before" "$load_after" "$(rel "$KVWIRE")" "$(git -C "$ROOT" rev-parse --short HEAD)" \
  "MIB=$MIB REQUESTS=$REQUESTS CHUNK_TOKENS=$CHUNK_TOKENS RAW_REPEAT=$RAW_REPEAT MODES='$MODES'" "$MODES" <<'EOF'
import json, statistics, sys, datetime, platform
work, out, mib, chunk_tokens, chunk_bytes, backends, requests, lb, la, kvwire, commit, env, modes = sys.argv[1:]
mib, chunk_tokens, chunk_bytes, requests = int(mib), int(chunk_tokens), int(chunk_bytes), int(requests)
nbytes = mib << 20
rows = [json.loads(l) for l in open(f"{work}/requests.jsonl")]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
import os
res = {"command": f"bench/cli_transfer.sh with {env}", "kvwire": kvwire, "commit": commit,
       "date": datetime.datetime.utcnow().strftime("%Y-%m-%dT%H:%M:%SZ"),
       "machine": f"{cpu} x{os.cpu_count()}", "load_before": lb, "load_after": la,
       "kv_bytes": nbytes, "chunk_tokens": chunk_tokens, "chunk_bytes": chunk_bytes,
       "requests": rows, "backends": {}}
lines = []
for b, mode in ((b, m) for b in backends.split() for m in modes.split()):
    rs = sorted((r for r in rows if r["backend"] == b and r["mode"] == mode), key=lambda r: r["request"])
    raw = json.load(open(f"{work}/raw-{b}/transport.json"))
    pt = raw["configs"][0]["points"][0]
    first, later = rs[0], rs[1:]
    steady = statistics.median(r["send_s"] for r in later)
    d = {"raw_gbps": pt["raw_gbps"], "perftest_gbps": pt.get("perftest_gbps"),
         "perftest_e_gbps": pt.get("perftest_e_gbps"),
         "first_send_s": first["send_s"], "first_gbps": nbytes / first["send_s"] / 1e9,
         "steady_send_s": steady, "steady_gbps": nbytes / steady / 1e9,
         "first_load_s": first["load_s"], "max_load_s": max(r["load_s"] for r in rs),
         "first_wall_s": first["wall_s"], "steady_wall_s": statistics.median(r["wall_s"] for r in later)}
    d["first_vs_raw"] = d["first_gbps"] / d["raw_gbps"]
    d["steady_vs_raw"] = d["steady_gbps"] / d["raw_gbps"]
    res["backends"][b if mode == "fresh" else f"{b}+{mode}"] = d
    pe = f'{d["perftest_e_gbps"]:.2f}' if d["perftest_e_gbps"] else "-"
    label = b if mode == "fresh" else f"{b}, --preallocate"
    lines.append(f'| {label} | {d["raw_gbps"]:.2f} | {pe} | {d["first_send_s"]:.3f} | {d["first_gbps"]:.2f} | '
                 f'**{d["first_vs_raw"]:.2f}** | {d["steady_send_s"]:.3f} | {d["steady_gbps"]:.2f} | '
                 f'**{d["steady_vs_raw"]:.2f}** | {d["first_load_s"]:.4f} / {d["max_load_s"]:.4f} | '
                 f'{d["first_wall_s"]:.2f} / {d["steady_wall_s"]:.2f} |')
json.dump(res, open(out + ".json", "w"), indent=1)
md = f"""# fp16 handoff through the CLI, two processes on loopback (bench/cli_transfer.sh)

Command: `bench/cli_transfer.sh` with `{env}`, kvwire `{kvwire}` at git `{commit}`.
Date {res["date"]}; {res["machine"]}; load average {lb} before, {la} after.
KV: synthetic fp16, 32 layers x {mib * 8:,} tokens x 8 kv heads x 128 = {nbytes:,} bytes; chunks of
{chunk_tokens:,} tokens ({chunk_bytes:,} bytes). A fresh `kvwire serve --discard` per backend (and one
started with `--preallocate` of the KV's shape: its cache is allocated and paged in before it
listens), then
{requests} `kvwire send --codec fp16` requests one after another: the first request, and the median
of the {requests - 1} later ones (steady). Raw: `kvwire bench transport --no-session` at the chunk's size
in the same run, median of its runs (one connection, messages one way, buffers pooled and warm);
for ucx also ucx_perftest -t ucp_am_bw with -e (the backend's protocol).

| backend | raw GB/s | perftest -e GB/s | first send s | first GB/s | first / raw | steady send s | steady GB/s | steady / raw | load s (first / max) | wall s (first / steady) |
|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|
""" + "\n".join(lines) + """

*send s*: `kvwire send --json` send_s, Open() until KV-ready (every chunk written into the
receiver's KV cache and acknowledged); *GB/s*: fp16 bytes of the KV (1e9) / send s; *load s*: mapping
and validating the dump; *wall s*: the whole `kvwire send` process (process start, load, the
bits/element probe, connect and authentication, the transfer).
"""
open(out + ".md", "w").write(md)
print(md)
EOF
