#!/usr/bin/env bash
# Reproduces the accuracy results of one model (bench/results/accuracy_<name>*.json and the
# diagnose report): the baselines, fraqtl at every ladder budget, the ablations, and
# `kvwire diagnose` followed by `kvwire eval` with the profile it wrote.
#
# usage: bench/accuracy.sh NAME MODEL CALIB_TEXT EVAL_TEXT [PREFIX CONT SEQS CALIB_TOKENS]
#   NAME          results are written as bench/results/accuracy_NAME*.json, diagnose_NAME/
#   MODEL         llama2.c .bin (tokenizer.bin beside it) or .gguf
#   CALIB_TEXT    calibration text (profile, sweep windows); never the eval text
#   EVAL_TEXT     held-out text for every reported number
#   PREFIX CONT   golden-protocol window (default 256 256), SEQS windows (default 16)
#   CALIB_TOKENS  tokens of CALIB_TEXT calibrated on (default 16384); diagnose sweeps on the rest
# Environment: KVWIRE (default build/bin/kvwire), OUT (default bench/results), TOKENIZER (a
# tokenizer.bin when it is not beside a llama2.c MODEL).
# Every command is echoed with its wall time; nothing here is hand-tuned per model.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $# -ge 4 ]] || { sed -n '2,14p' "$0"; exit 2; }
name=$1 model=$2 calib=$3 evaltext=$4
prefix=${5:-256} cont=${6:-256} seqs=${7:-16} calib_tokens=${8:-16384}
kvwire=${KVWIRE:-build/bin/kvwire}
out=${OUT:-bench/results}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"
tok=()
[[ -n ${TOKENIZER:-} ]] && tok=(--tokenizer "$TOKENIZER")

run() {
  echo "+ $*" >&2
  local t0=$SECONDS
  "$@"
  echo "  ($((SECONDS - t0)) s)" >&2
}

win=(--prefix "$prefix" --cont "$cont" --seqs "$seqs" --seed 1)
ladder=fraqtl@0.5,fraqtl@0.75,fraqtl@1,fraqtl@1.5,fraqtl@2,fraqtl@2.5,fraqtl@3,fraqtl@4,fraqtl@6
baselines=fp16,int8,q8_0,q4_0,kivi2,kivi4,int4-token,int3-token,int2-token
baselines+=,rank-1,rank-2,rank-3,rank-4,rank-5,rank-6,rank-8,rank-10,rank-12,rank-16,rank-20,rank-24,rank-32,rank-48,rank-63
baselines+=,turbo1,turbo2,turbo3,turbo4,turbo5,turbo6,turbo8
ablate=""
for b in 2.5 3; do
  for opt in prerope=0 book=gauss floor=1 protect=0 entropy=none gain=1 window=32 sink=4 sign=1 delta=16; do
    ablate+="fraqtl@$b:$opt,"
  done
done

# 1. the baselines
run "$kvwire" eval --model "$model" "${tok[@]}" --text "$evaltext" "${win[@]}" --codecs "$baselines" \
  --json "$out/accuracy_${name}.json"

# 2. fraqtl: calibrate (metric and PCA bases), the ladder and the ablations
run "$kvwire" calibrate --model "$model" "${tok[@]}" --text "$calib" --tokens "$calib_tokens" \
  --out "$work/metric.kvp"
run "$kvwire" calibrate --model "$model" "${tok[@]}" --text "$calib" --tokens "$calib_tokens" --basis pca \
  --out "$work/pca.kvp"
run "$kvwire" eval --model "$model" "${tok[@]}" --text "$evaltext" "${win[@]}" --profile "$work/metric.kvp" \
  --codecs "$ladder,${ablate%,}" --json "$out/accuracy_${name}_fraqtl.json"
run "$kvwire" eval --model "$model" "${tok[@]}" --text "$evaltext" "${win[@]}" --profile "$work/pca.kvp" \
  --codecs fraqtl@0.5,fraqtl@1,fraqtl@2.5,fraqtl@3 --json "$out/accuracy_${name}_fraqtl_pca.json"

# 3. diagnose (per-layer allocation, sweep on calibration text beyond CALIB_TOKENS), then the
#    resulting profile's levels on the held-out eval text
mkdir -p "$out/diagnose_${name}"
run "$kvwire" diagnose --model "$model" "${tok[@]}" --text "$calib" --calib-tokens "$calib_tokens" \
  "${win[@]}" --out "$out/diagnose_${name}/profile.kvp" --report "$out/diagnose_${name}"
# diagnose's default ladder: 0.5,0.75,1,1.5,2,3,4,6 (no 2.5)
levels=fraqtl@0.5:level=0.5,fraqtl@0.75:level=0.75,fraqtl@1:level=1,fraqtl@1.5:level=1.5
levels+=,fraqtl@2:level=2,fraqtl@3:level=3,fraqtl@4:level=4,fraqtl@6:level=6
run "$kvwire" eval --model "$model" "${tok[@]}" --text "$evaltext" "${win[@]}" \
  --profile "$out/diagnose_${name}/profile.kvp" --codecs "$levels" \
  --json "$out/accuracy_${name}_diagnosed.json"
echo "done: $out/accuracy_${name}*.json, $out/diagnose_${name}/" >&2
