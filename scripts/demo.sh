#!/usr/bin/env bash
# README command 1: install what is missing, build, then hand a prompt's KV cache from a prefill
# process to a decode process on loopback (examples/prefill_decode_handoff) with the project's
# model: over tcp and ucx, at fp16 (must reproduce the single-process text exactly), with fraqtl
# at 2 bits/element and with q4_0 for comparison; then a live context migration between two
# decode processes (examples/context_migration). Ends with summary tables.
# Environment: KVWIRE_BUILD_DIR (default build), KVWIRE_DEMO_OUT (default <build>/demo);
# arguments go to the cmake configure of scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh "$@"
build="${KVWIRE_BUILD_DIR:-build}"
bin="$build/bin"
out="${KVWIRE_DEMO_OUT:-$build/demo}"
model=models/kjv-gqa-6l/model.bin
mkdir -p "$out" "$build/profiles"
rm -f "$out"/*.json

# 1. A fraqtl profile for this exact model file, calibrated once (the file's sha256 names it).
sha=$(sha256sum "$model" | cut -c1-16)
profile="$build/profiles/kjv-gqa-6l-$sha.kvp"
echo
if [ -f "$profile" ]; then
  echo "== 1. fraqtl profile: reusing $profile (calibrated earlier for this model file)"
else
  echo "== 1. fraqtl profile: calibrating on models/data/kjv_calib.txt"
  t0=$(date +%s.%N)
  "$bin/kvwire" calibrate --model "$model" --text models/data/kjv_calib.txt --out "$profile"
  t1=$(date +%s.%N)
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "calibration took %.1f s\n", b - a }'
fi

# UCX is optional (auto-detected at configure time): run it when the examples link it.
backends=(tcp)
if grep -q libucp <<<"$(ldd "$bin/prefill_decode_handoff")"; then
  backends+=(ucx)
else
  echo "(this build has no UCX backend: tcp only)"
fi

# 2. The handoff: one driver run per (backend, codec); each starts both processes itself.
for backend in "${backends[@]}"; do
  for codec in fp16 q4_0 fraqtl@2; do
    echo
    echo "== 2. prefill -> decode handoff, $backend, $codec"
    extra=()
    [[ $codec == fraqtl* ]] && extra=(--profile "$profile")
    "$bin/prefill_decode_handoff" --model "$model" --backend "$backend" --codec "$codec" \
      "${extra[@]}" --new-tokens 48 --json "$out/handoff-$backend-$codec.json"
  done
done

# 3. Context migration A -> B while A keeps generating, tcp, fp16 and fraqtl@2.
for codec in fp16 fraqtl@2; do
  echo
  echo "== 3. context migration, tcp, $codec"
  extra=()
  [[ $codec == fraqtl* ]] && extra=(--profile "$profile")
  "$bin/context_migration" --model "$model" --backend tcp --codec "$codec" "${extra[@]}" \
    --new-tokens 64 --migrate-after 16 --json "$out/migration-tcp-$codec.json"
done

echo
echo "== 4. summary ($(nproc) cores; times are wall clock on this machine, one run each)"
python3 - "$out" <<'EOF'
import glob, json, os, sys
out = sys.argv[1]
def load(pattern):
    return [json.load(open(p)) for p in sorted(glob.glob(os.path.join(out, pattern)))]
yes = lambda b: "yes" if b else "no"
print("prefill -> decode handoff (%d prompt tokens, 48 generated; KV of all but the last prompt token)"
      % load("handoff-*.json")[0]["prompt_tokens"])
fmt = "%-8s %-9s %11s %8s %10s %14s %13s %8s %6s"
print(fmt % ("backend", "codec", "wire bytes", "ratio", "bits/elem", "KV-ready B ms", "KV-ready e2e", "top-1", "equal"))
for r in load("handoff-*.json"):
    print(fmt % (r["backend"], r["codec"], "{:,}".format(r["wire_bytes"] + r["header_bytes"]),
                 "%.2fx" % r["ratio_vs_fp16"], "%.3f" % r["bits_per_element"],
                 "%.1f" % r["kv_ready_receiver_ms"], "%.1f" % r["kv_ready_end_to_end_ms"],
                 "%.1f%%" % (100 * r["top1_teacher_forced"]), yes(r["text_equal"])))
print()
print("context migration A -> B (tcp, 64 tokens, A told to migrate after 16)")
fmt = "%-9s %11s %8s %10s %12s %13s %8s %6s"
print(fmt % ("codec", "wire bytes", "ratio", "bits/elem", "pre-copy ms", "downtime ms", "top-1", "equal"))
for r in load("migration-*.json"):
    print(fmt % (r["codec"], "{:,}".format(r["wire_bytes"] + r["header_bytes"]),
                 "%.2fx" % r["ratio_vs_fp16"], "%.3f" % r["bits_per_element"],
                 "%.1f" % r["precopy_ms"], "%.1f" % r["downtime_ms"],
                 "%.1f%%" % (100 * r["top1_teacher_forced"]), yes(r["text_equal"])))
EOF
cat <<EOF

wire bytes: every byte of chunk traffic (chunk frames + descriptors) plus the stream header;
ratio = fp16 bytes of the same KV / wire bytes; bits/elem = wire bytes x 8 / elements (all-in).
KV-ready B: the decode process, from the request's first message to the last layer decoded;
KV-ready e2e: from the prefill process starting the prefill (connection and model already up)
to the last layer decoded on B, one monotonic clock for both processes (same host).
top-1: B's argmax agreement with the single-process (float32) run, teacher-forced on its tokens.
equal: B's greedy text (after the migration: A's tokens then B's) equals the single-process run;
required at fp16 (the programs exit non-zero otherwise). Results as JSON in $out/.
EOF
