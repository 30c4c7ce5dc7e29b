#!/usr/bin/env bash
# Handoff of a real KV cache over a 1 Gbit/s link: fp16 vs compressed codecs, encode and decode
# on the clock (how the sender picks levels over such a link is ctest kvwire_netns_tbf_adaptive).
#
# Two network namespaces joined by a veth pair shaped with tbf (rate $RATE, both ends);
# `kvwire serve` in one, `kvwire send` in the other, tcp backend. The KV is the project's model
# (models/kjv-gqa-6l) captured over $WINDOWS consecutive 512-token windows of the eval text and
# concatenated along tokens (bench/concat_kv_windows.py: keys re-rotated to their global
# positions), stored as fp16. Each codec is sent $RUNS times (codecs interleaved within a run),
# one level per transfer, and the median is reported of:
#   send_s    `kvwire send --json` "send_s": Open() -> the receiver confirmed every chunk
#             decoded into its KV cache (KV-ready): encode, wire and decode, pipelined layer by
#             layer, all on the clock. Not on it: process start, reading the dump, the probe
#             encode that measures each level's bits/element, connect + authentication (a
#             serving node keeps its connection). The receiver runs with --discard (it writes
#             no file) and decodes into the KV cache it allocated for the warm-up transfer, as a
#             decode node decodes into its preallocated KV pool.
#   wall_s    the whole `kvwire send` process, start to exit (everything above included).
# plus bytes on the wire (chunk frames + descriptors), all-in bits/element, and ratios vs fp16;
# and, on a 12-window slice of the same KV, each codec's single-thread CPU encode/decode GB/s
# (`kvwire bench codec`), which says whether a codec can keep up with 125 MB/s of wire.
#
# Usage (root, Debian bookworm, iproute2, python3-numpy):
#   bench/handoff_tbf.sh
# Environment: KVWIRE (default build/bin/kvwire), RUNS (3), ENCODE_THREADS (0), WINDOWS (128 = 65,536
# tokens, 192 MiB of fp16), CODECS (space-separated; an entry LEVEL,LEVEL,.../MS is an adaptive
# ladder sent with --deadline-ms MS, the sender choosing per chunk), RATE (1gbit), WORK (scratch dir, keeps the
# capture and the profile between runs), PROFILE (a .kvp for this model; calibrated into WORK
# when unset), OUT (bench/results/handoff_tbf: writes OUT.json and OUT.md), KEEP_LOGS=1.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
KVWIRE=${KVWIRE:-$ROOT/build/bin/kvwire}
RUNS=${RUNS:-3}
WINDOWS=${WINDOWS:-128}
RATE=${RATE:-1gbit}
ENCODE_THREADS=${ENCODE_THREADS:-0}  # kvwire send --encode-threads (0: the machine's cores, <= 4)
CODECS=${CODECS:-"fp16 q8_0 q4_0 kivi4 kivi2 int4-token int3-token int2-token turbo3 fraqtl@4 fraqtl@2 fraqtl@1 fraqtl@2:entropy=none"}
WORK=${WORK:-$ROOT/build/handoff_tbf}
OUT=${OUT:-$ROOT/bench/results/handoff_tbf}
PY=/usr/bin/python3  # Debian's, where python3-numpy lives

SCRIPT=handoff_tbf.sh
source "$ROOT/bench/lib.sh"
[ "$(id -u)" = 0 ] || die "needs root (network namespaces, tc)"
command -v ip >/dev/null && command -v tc >/dev/null || die "needs iproute2 (ip, tc)"
[ -x "$KVWIRE" ] || die "no kvwire binary at $KVWIRE (set KVWIRE)"
$PY -c 'import numpy' 2>/dev/null || die "needs python3-numpy for $PY"
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
command_line="$0 $*"
# Paths inside the repository are recorded relative to it, so a report names no machine's layout.
env_line="KVWIRE=$(rel "$KVWIRE") RUNS=$RUNS WINDOWS=$WINDOWS RATE=$RATE ENCODE_THREADS=$ENCODE_THREADS WORK=$(rel "$WORK") CODECS='$CODECS'"

# --- data: WINDOWS x 512 tokens of the eval text, fp16 -------------------------------------
KV=$WORK/kv-${WINDOWS}w.safetensors
if [ ! -s "$KV" ]; then
  echo "capturing $WINDOWS windows of 512 tokens..."
  rm -rf "$WORK/windows" && mkdir -p "$WORK/windows"
  files=()
  for ((w = 0; w < WINDOWS; ++w)); do
    f=$WORK/windows/w$(printf %04d $w).safetensors
    "$KVWIRE" capture --model "$MODEL" --text "$ROOT/models/data/kjv_eval.txt" --offset $((w * 512)) \
      --tokens 512 --dtype f16 --out "$f" >/dev/null
    files+=("$f")
  done
  $PY "$ROOT/bench/concat_kv_windows.py" "$KV.tmp" "${files[@]}"
  mv "$KV.tmp" "$KV"
  rm -rf "$WORK/windows"
fi
SLICE=$WORK/kv-12w.safetensors  # for the codec speed probe
if [ ! -s "$SLICE" ]; then
  files=()
  for ((w = 0; w < 12; ++w)); do
    f=$WORK/s$w.safetensors
    "$KVWIRE" capture --model "$MODEL" --text "$ROOT/models/data/kjv_eval.txt" --offset $((w * 512)) \
      --tokens 512 --dtype f16 --out "$f" >/dev/null
    files+=("$f")
  done
  $PY "$ROOT/bench/concat_kv_windows.py" "$SLICE" "${files[@]}" >/dev/null
  rm -f "${files[@]}"
fi

# --- fraqtl profile --------------------------------------------------------------------------
if [ -z "${PROFILE:-}" ]; then
  PROFILE=$WORK/kjv-gqa-6l-$(sha256sum "$MODEL" | cut -c1-16).kvp
  if [ ! -s "$PROFILE" ]; then
    echo "calibrating a fraqtl profile..."
    "$KVWIRE" calibrate --model "$MODEL" --text "$ROOT/models/data/kjv_calib.txt" --out "$PROFILE" \
      >/dev/null
  fi
fi

# --- namespaces -------------------------------------------------------------------------------
PORT=7090
SERVE_PID=
LOGS=$WORK/logs-$$
cleanup() {
  set +e
  [ -n "$SERVE_PID" ] && kill "$SERVE_PID" 2>/dev/null && wait "$SERVE_PID" 2>/dev/null
  veth_cleanup
  rm -rf "$WORK/out-$$"
  [ "${KEEP_LOGS:-0}" = 1 ] && echo "logs in $LOGS" || rm -rf "$LOGS"
}
trap cleanup EXIT
# RATE=none leaves the veth unshaped: what the two processes manage on these cores alone.
veth_pair kvwb 10.98.0 "$RATE"

mkdir -p "$LOGS"
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$LOGS/key"
chmod 600 "$LOGS/key"
ip netns exec $NS_A "$KVWIRE" serve --listen $IP_A:$PORT --backend tcp --key-file "$LOGS/key" \
  --discard --profile "$PROFILE" --stall-timeout-ms 120000 -v >"$LOGS/serve.log" 2>&1 &
SERVE_PID=$!
for _ in $(seq 300); do grep -q "listening on" "$LOGS/serve.log" && break; sleep 0.05; done
grep -q "listening on" "$LOGS/serve.log" || die "serve did not start: $(cat "$LOGS/serve.log")"

send() {  # send ID CODEC: one transfer, its JSON in $LOGS/send-ID.json
  # CODEC may be an adaptive ladder with a deadline, LEVEL,LEVEL,.../DEADLINE_MS.
  local prof=() extra=() codec=${2%%/*}
  case $2 in *fraqtl*) prof=(--profile "$PROFILE") ;; esac
  case $2 in */*) extra=(--deadline-ms "${2##*/}") ;; esac
  ip netns exec $NS_B "$KVWIRE" send --connect $IP_A:$PORT --backend tcp --key-file "$LOGS/key" \
    --in "$KV" --codec "$codec" "${prof[@]}" "${extra[@]}" --chunk-tokens 2048 --request-id $1 \
    --encode-threads "$ENCODE_THREADS" \
    --json "$LOGS/send-$1.json" >"$LOGS/send-$1.log" 2>&1 ||
    die "send $2 failed: $(cat "$LOGS/send-$1.log")"
}
wait_served() {  # wait_served ID: serve prints its line once the request is complete
  for _ in $(seq 1200); do grep -q "^request $1 from .* -> " "$LOGS/serve.log" && break; sleep 0.05; done
  grep -q "^request $1 from .* -> " "$LOGS/serve.log" ||
    die "serve did not finish request $1: $(tail -5 "$LOGS/serve.log")"
  rm -f "$WORK/out-$$/request-$1.safetensors"
}

# The dump's page cache made the same for every run of this script: dropped, then read once in
# order. How its pages are cached changes what reading them costs the sender: on the VM of
# bench/results (kernel 6.18, ext4 with large folios) a dump cached as it was written came back
# largely in 4 KiB pages, whose first read costs each process about 1 us a page; read in order it
# is cached in 2 MiB folios, which a mapping maps whole (docs/benchmarks.md).
$PY -c 'import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
os.close(fd)' "$KV"
cat "$KV" >/dev/null

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
echo "KV: $KV ($(stat -c %s "$KV") bytes); link $RATE (tbf both ends); $RUNS runs; load $load_before"
# Untimed warm-up: the dump into the page cache, and a fresh serve's first connection out of the
# way (it can lose a race in the tcp backend's authentication and reconnect, see the .md).
send 1000000 q4_0
wait_served 1000000
id=0
for ((run = 1; run <= RUNS; ++run)); do
  for codec in $CODECS; do
    id=$((id + 1))
    t0=$(date +%s.%N)
    send $id "$codec"
    t1=$(date +%s.%N)
    wait_served $id
    ready=$(grep -A1 "^request $id from " "$LOGS/serve.log" | sed -n 's/.*, \([0-9.]*\) ms to KV-ready.*/\1/p')
    $PY - "$LOGS/send-$id.json" "$codec" "$run" "$t0" "$t1" "$ready" >>"$LOGS/runs.jsonl" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))
print(json.dumps({"codec": sys.argv[2], "run": int(sys.argv[3]),
                  "wall_s": float(sys.argv[5]) - float(sys.argv[4]),
                  "serve_kv_ready_s": float(sys.argv[6]) / 1e3, "send": j}))
EOF
    $PY -c "import json; j = json.load(open('$LOGS/send-$id.json')); print('%-22s run %d: %7.3f s send, %7.3f s wall, %11d wire bytes, %d reconnect(s)' % ('$codec', $run, j['send_s'], $t1 - $t0, j['wire_bytes'], j['reconnects']))"
  done
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

# CPU codec speed on a slice (single thread; the sender encodes on one thread, the receiver
# decodes on one). Run from the repository root with the slice's path relative to it: the report
# records the input's path, and it names no machine's layout.
speed_codecs=$(for c in $CODECS; do case $c in */*) ;; *) echo "$c" ;; esac; done | paste -sd,)
(cd "$ROOT" && "$KVWIRE" bench codec --in "$(rel "$SLICE")" --profile "$PROFILE" \
  --codecs "$speed_codecs" --repeat 3 --out-dir "$LOGS/codec" >"$LOGS/codec.log" 2>&1) ||
  die "bench codec failed: $(tail -3 "$LOGS/codec.log")"

$PY "$ROOT/bench/handoff_tbf_report.py" --runs "$LOGS/runs.jsonl" --codec-speed "$LOGS/codec/codec_cpu.json" \
  --out "$OUT" --command "$command_line" --env "$env_line" --kv "$KV" --rate "$RATE" \
  --load-before "$load_before" --load-after "$load_after" --kvwire "$(rel "$KVWIRE")" --profile "$PROFILE"
