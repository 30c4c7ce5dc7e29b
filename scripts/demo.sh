#!/usr/bin/env bash
# README command 1 (for now): install what is missing, build, then compress a SYNTHETIC KV cache
# with four codecs and report the all-in bits/element and the round-trip error of each.
# (To be replaced by the prefill -> decode handoff demo.)
# Environment: KVWIRE_BUILD_DIR (default build), KVWIRE_DEMO_OUT (default out/demo); arguments go
# to the cmake configure of scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh "$@"
kvwire="${KVWIRE_BUILD_DIR:-build}/bin/kvwire"
out="${KVWIRE_DEMO_OUT:-out/demo}"
mkdir -p "$out"

layers=6 kv_heads=2 head_dim=64 tokens=2048
echo
echo "== 1. a synthetic KV dump (NOT from a model: structure only; see kvwire synth --help)"
"$kvwire" synth --out "$out/kv.safetensors" --layers $layers --kv-heads $kv_heads \
  --head-dim $head_dim --tokens $tokens --seed 1

rows=()
for codec in fp16 q4_0 kivi2 turbo3; do
  echo
  echo "== 2. $codec: encode -> inspect -> decode"
  "$kvwire" encode --in "$out/kv.safetensors" --codec "$codec" --out "$out/$codec.kvw"
  json=$("$kvwire" inspect "$out/$codec.kvw" --json)
  spec=$(sed -n 's/^  "codec": "\(.*\)",$/\1/p' <<<"$json")
  bytes=$(sed -n 's/^  "bytes": \([0-9]*\),$/\1/p' <<<"$json")
  bpe=$(sed -n 's/^  "bits_per_element": \([^,]*\),$/\1/p' <<<"$json")
  decoded=$("$kvwire" decode --in "$out/$codec.kvw" --out "$out/$codec.decoded.safetensors" \
    --reference "$out/kv.safetensors")
  echo "$decoded"
  err=$(sed -n 's/.*relative RMSE \([^ ]*\) (K \([^,]*\), V \([^)]*\)).*/\1 \2 \3/p' <<<"$decoded")
  read -r rel rel_k rel_v <<<"$err"
  rows+=("$(printf '%-18s %12s %10.4f %9.2fx %12s %12s %12s' "$spec" "$bytes" "$bpe" \
    "$(awk -v b="$bpe" 'BEGIN { printf "%.2f", 16 / b }')" "$rel" "$rel_k" "$rel_v")")
done

echo
echo "== 3. report: $layers layers x $tokens tokens x $kv_heads kv heads x $head_dim head_dim, fp16 source"
printf '%-18s %12s %10s %10s %12s %12s %12s\n' codec bytes bits/elem "vs fp16" "rel. RMSE" "K" "V"
printf '%s\n' "${rows[@]}"
echo
echo "bits/elem is all-in: every byte of the stream x 8 / (layers x 2 x kv_heads x head_dim x tokens)."
echo "rel. RMSE = sqrt(sum (decoded - original)^2 / sum original^2); on synthetic data it checks the"
echo "round trip, it is not an accuracy result (the model-based eval reports KL and perplexity)."
echo "Files are in $out/."
