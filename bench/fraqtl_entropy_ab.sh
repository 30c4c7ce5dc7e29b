#!/usr/bin/env bash
# fraqtl's two payloads side by side in one golden eval: the one-pass rANS payload (the
# default, entropy=rans) against the bit-packed payload with zstd's search (entropy=zstd), at
# every budget of the ladder, on the same windows with the same profile, for the three
# measurement models. Writes OUT/accuracy_<model>_rans_vs_zstd.json and prints the tables.
#
# Usage: bench/fraqtl_entropy_ab.sh
# Environment: KVWIRE (default build/bin/kvwire), OUT (bench/results), KVWIRE_TEST_DATA (the
# folder with models/stories260K/ and text/TinyStories-valid-sample.txt; default: the folder
# `shared` next to the repository root; that model is skipped, with a message, when absent).
set -euo pipefail
cd "$(dirname "$0")/.."
kvwire=${KVWIRE:-build/bin/kvwire}
out=${OUT:-bench/results}
shared=${KVWIRE_TEST_DATA:-$(cd .. && pwd)/shared}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
budgets="0.25 0.5 0.75 1 1.5 2 2.5 3 4 6"
codecs=""
for b in $budgets; do codecs+="fraqtl@$b,"; done
for b in $budgets; do codecs+="fraqtl@$b:entropy=zstd,"; done
codecs=${codecs%,}

one() {  # name model calib eval prefix [tokenizer args...]
  local name=$1 model=$2 calib=$3 evaltext=$4 prefix=$5
  shift 5
  echo "+ $name: calibrate, eval ($(date -u +%H:%M:%S))" >&2
  "$kvwire" calibrate --model "$model" "$@" --text "$calib" --out "$work/$name.kvp" > /dev/null
  "$kvwire" eval --model "$model" "$@" --text "$evaltext" --prefix "$prefix" --cont "$prefix" \
    --seqs 16 --seed 1 --profile "$work/$name.kvp" --codecs "$codecs" \
    --json "$out/accuracy_${name}_rans_vs_zstd.json" > /dev/null
}

one kjv-gqa-6l models/kjv-gqa-6l/model.bin models/data/kjv_calib.txt models/data/kjv_eval.txt 256
one kjv-mqa-hd128 models/kjv-mqa-hd128/model.bin models/data/kjv_calib.txt \
  models/data/kjv_eval.txt 256
st=$shared/models/stories260K
if [[ -f $st/stories260K.bin && -f $shared/text/TinyStories-valid-sample.txt ]]; then
  python3 bench/split_text.py "$shared/text/TinyStories-valid-sample.txt" "$work/st_calib.txt" \
    "$work/st_eval.txt" > /dev/null
  one stories260K "$st/stories260K.bin" "$work/st_calib.txt" "$work/st_eval.txt" 128 \
    --tokenizer "$st/tok512.bin"
else
  echo "stories260K skipped: no $st/stories260K.bin (set KVWIRE_TEST_DATA)" >&2
fi

python3 - "$out" $budgets <<'EOF'
import json, os, sys
out, budgets = sys.argv[1], sys.argv[2:]
for name in ["kjv-gqa-6l", "kjv-mqa-hd128", "stories260K"]:
    path = os.path.join(out, f"accuracy_{name}_rans_vs_zstd.json")
    if not os.path.exists(path):
        continue
    rows = {r["requested"]: r for r in json.load(open(path))["codecs"]}
    print(f"\n{name}\n\n| budget | rans b/e | rans KL | zstd b/e | zstd KL | KL rans / zstd |")
    print("|---:|---:|---:|---:|---:|---:|")
    for b in budgets:
        a, z = rows[f"fraqtl@{b}"], rows[f"fraqtl@{b}:entropy=zstd"]
        print(f"| {b} | {a['bits_per_element']:.4f} | {a['mean_kl']:.3e} | "
              f"{z['bits_per_element']:.4f} | {z['mean_kl']:.3e} | {a['mean_kl'] / z['mean_kl']:.3f} |")
EOF
