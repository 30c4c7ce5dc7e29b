#!/usr/bin/env bash
# Outages of seconds between a prefill and a decode node: every transfer must ride them out.
#
# Two network namespaces joined by a veth pair shaped with tbf to 1 Gbit/s on both ends;
# `kvwire serve` in one (a tcp and a ucx receiver), `kvwire send` in the other. Each transfer
# sends the project's model KV (models/kjv-gqa-6l, $TOKENS tokens of the eval text, fp16) at one
# codec and takes the link down once, for $SHORT_S s ($SHORT_RUNS transfers per backend and
# codec) or $LONG_S s ($LONG_RUNS), starting at a random point from 0 to $SPREAD_MS ms after
# `kvwire send` starts (so some outages begin before the first connect), on the sender's side
# or the receiver's, alternately. The sender runs with its default reconnect window (30 s).
# Every transfer must complete, and the KV the receiver wrote must equal a local
# `kvwire encode` + `kvwire decode` of the same input, byte for byte. Then $EXPIRED_RUNS
# transfers per backend get an outage longer than a short window (--reconnect-window-ms
# $SHORT_WINDOW_MS, outage $EXPIRED_S s): each must fail with one line naming the window, once
# the window has passed, and not hang.
#
# Usage (root, Debian bookworm, iproute2): bench/netns_outage.sh
# Environment: KVWIRE (default build/bin/kvwire), TOKENS (4096), SHORT_RUNS (20), LONG_RUNS (10),
# EXPIRED_RUNS (2), SHORT_S (2), LONG_S (20), SPREAD_MS (250), BACKENDS ("tcp ucx"),
# CODECS ("int8 fraqtl@2"), SEED (1), WORK (build/netns_outage: the capture and the profile are
# kept there), OUT (bench/results/netns_outage: OUT.md and OUT.jsonl), KEEP_LOGS=1.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SCRIPT=netns_outage.sh
KVWIRE=${KVWIRE:-$ROOT/build/bin/kvwire}
TOKENS=${TOKENS:-4096}
SHORT_RUNS=${SHORT_RUNS:-20} LONG_RUNS=${LONG_RUNS:-10} EXPIRED_RUNS=${EXPIRED_RUNS:-2}
SHORT_S=${SHORT_S:-2} LONG_S=${LONG_S:-20} SPREAD_MS=${SPREAD_MS:-250}
SHORT_WINDOW_MS=3000 EXPIRED_S=8
BACKENDS=${BACKENDS:-"tcp ucx"}
CODECS=${CODECS:-"int8 fraqtl@2"}
SEED=${SEED:-1}
WORK=${WORK:-$ROOT/build/netns_outage}
OUT=${OUT:-$ROOT/bench/results/netns_outage}
source "$ROOT/bench/lib.sh"
need_netns
need_kvwire
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
RANDOM=$SEED
command_line="$(rel "$0") $*"
env_line="KVWIRE=$(rel "$KVWIRE") TOKENS=$TOKENS SHORT_RUNS=$SHORT_RUNS LONG_RUNS=$LONG_RUNS"
env_line+=" EXPIRED_RUNS=$EXPIRED_RUNS SHORT_S=$SHORT_S LONG_S=$LONG_S SPREAD_MS=$SPREAD_MS"
env_line+=" BACKENDS=\"$BACKENDS\" CODECS=\"$CODECS\" SEED=$SEED"

# --- data, profile and the local references ----------------------------------------------------
KV=$(model_kv "$TOKENS")
PROFILE=$(model_profile)
local_refs "$KV" "$PROFILE" $CODECS

# --- namespaces --------------------------------------------------------------------------------
LOGS=$WORK/logs-$$
SERVE_PIDS=()
cleanup() {
  set +e
  for p in "${SERVE_PIDS[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
  veth_cleanup
  [ "${KEEP_LOGS:-0}" = 1 ] && echo "logs in $LOGS" || rm -rf "$LOGS"
}
trap cleanup EXIT
veth_pair kvwo 10.97.$(($$ % 250)) 1gbit
link_up() { veth_up; }

mkdir -p "$LOGS"
new_key "$LOGS/key"
declare -A PORT=([tcp]=7301 [ucx]=7302)
# UCX over the veth only (its shared-memory transports would bypass the link).
UCX_ENV_A=(env UCX_TLS=tcp UCX_NET_DEVICES=$DEV_A)
UCX_ENV_B=(env UCX_TLS=tcp UCX_NET_DEVICES=$DEV_B)
for b in $BACKENDS; do
  mkdir -p "$LOGS/out-$b"
  ip netns exec $NS_A "${UCX_ENV_A[@]}" "$KVWIRE" serve --listen $IP_A:${PORT[$b]} --backend "$b" \
    --key-file "$LOGS/key" --profile "$PROFILE" --out-dir "$LOGS/out-$b" \
    --stall-timeout-ms 60000 -v >"$LOGS/serve-$b.log" 2>&1 &
  SERVE_PIDS+=($!)
done
for b in $BACKENDS; do
  for _ in $(seq 300); do grep -q "listening on" "$LOGS/serve-$b.log" && break; sleep 0.05; done
  grep -q "listening on" "$LOGS/serve-$b.log" || die "serve $b did not start"
done

# transfer ID BACKEND CODEC OUTAGE_S AT_MS SIDE [WINDOW_MS]: one send with one outage; appends a
# JSON line to $LOGS/runs.jsonl.
transfer() {
  local id=$1 b=$2 codec=$3 outage=$4 at=$5 side=$6 window=${7:-}
  local ns=$NS_B dev=$DEV_B extra=()
  [ "$side" = receiver ] && ns=$NS_A dev=$DEV_A
  # A short window also gets a short stall timeout: a link that goes silent mid-transfer is then
  # noticed in a second, not ten.
  [ -n "$window" ] && extra=(--reconnect-window-ms "$window" --stall-timeout-ms 1000)
  local t0 t1 rc=0
  t0=$(date +%s.%N)
  # The sender's exit status and the time it exited (it may end while the link is still down).
  (
    rc=0
    ip netns exec $NS_B "${UCX_ENV_B[@]}" timeout 300 "$KVWIRE" send --connect $IP_A:${PORT[$b]} \
      --backend "$b" --key-file "$LOGS/key" --in "$KV" --codec "$codec" --profile "$PROFILE" \
      --chunk-tokens 512 --request-id "$id" "${extra[@]}" >"$LOGS/send-$id.out" \
      2>"$LOGS/send-$id.err" || rc=$?
    date +%s.%N >"$LOGS/send-$id.end"
    exit $rc
  ) &
  local pid=$!
  sleep "$(awk -v m="$at" 'BEGIN { printf "%.3f", m / 1000 }')"
  ip -n "$ns" link set "$dev" down
  sleep "$outage"
  ip -n "$ns" link set "$dev" up
  link_up
  wait $pid || rc=$?
  t1=$(cat "$LOGS/send-$id.end")
  local verdict
  if [ $rc = 0 ]; then
    local got=$LOGS/out-$b/request-$id.safetensors
    for _ in $(seq 600); do grep -q "^request $id from .* -> " "$LOGS/serve-$b.log" && break; sleep 0.05; done
    if [ ! -s "$got" ]; then
      verdict="sender ok, receiver wrote nothing"
    elif cmp -s "$got" "$WORK/ref-$codec.safetensors"; then
      verdict=identical
    else
      verdict=CORRUPT
    fi
    rm -f "$got"
  elif [ $rc = 124 ]; then
    verdict=HUNG
  else
    verdict="failed ($rc): $(tr '\n' ' ' <"$LOGS/send-$id.err" | cut -c1-300)"
  fi
  local reconnects
  reconnects=$(sed -n 's/.*; \([0-9]*\) reconnect(s).*/\1/p' "$LOGS/send-$id.out" | tail -1)
  printf '{"id": %d, "backend": "%s", "codec": "%s", "outage_s": %s, "at_ms": %d, "side": "%s", "window_ms": %s, "rc": %d, "seconds": %.3f, "reconnects": %s, "verdict": "%s"}\n' \
    "$id" "$b" "$codec" "$outage" "$at" "$side" "${window:-30000}" "$rc" \
    "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" "${reconnects:-0}" \
    "$(sed 's/["\\]/ /g' <<<"$verdict")" | tee -a "$LOGS/runs.jsonl"
}

id=0
sides=(sender receiver)
for b in $BACKENDS; do
  for codec in $CODECS; do
    for ((r = 0; r < SHORT_RUNS + LONG_RUNS; ++r)); do
      id=$((id + 1))
      outage=$SHORT_S
      [ $r -ge "$SHORT_RUNS" ] && outage=$LONG_S
      transfer $id "$b" "$codec" "$outage" $((RANDOM % (SPREAD_MS + 1))) "${sides[$((r % 2))]}"
    done
  done
  for ((r = 0; r < EXPIRED_RUNS; ++r)); do
    id=$((id + 1))
    transfer $id "$b" "${CODECS%% *}" "$EXPIRED_S" $((RANDOM % (SPREAD_MS + 1))) \
      "${sides[$((r % 2))]}" "$SHORT_WINDOW_MS"
  done
done

# --- report ------------------------------------------------------------------------------------
cp "$LOGS/runs.jsonl" "$OUT.jsonl"
python3 - "$OUT.jsonl" "$OUT.md" "$command_line" "$env_line" "$SHORT_WINDOW_MS" "$EXPIRED_S" <<'EOF'
import json, statistics, sys, platform, datetime
runs = [json.loads(l) for l in open(sys.argv[1])]
out, cmd, env, short_window, expired_s = sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6]
lines = ["# Outages between a prefill and a decode node", "",
         f"Command: `{env} {cmd}`", "",
         f"Machine: {platform.machine()}, {datetime.datetime.utcnow().strftime('%Y-%m-%dT%H:%M:%SZ')}; "
         "two network namespaces, veth shaped with tbf to 1 Gbit/s on both ends.", "",
         "Each transfer takes the link down once (sender's or receiver's side, alternately) at a random "
         "point after `kvwire send` starts. identical: the KV the receiver wrote equals a local "
         "`kvwire encode` + `kvwire decode`, byte for byte.", "",
         "| backend | codec | outage | window | transfers | outage began before the send ended | "
         "identical | failed | corrupt or hung | median s | max s | reconnects |",
         "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
groups = {}
for r in runs:
    groups.setdefault((r["backend"], r["codec"], r["outage_s"], r["window_ms"]), []).append(r)
for (b, c, o, w), rs in groups.items():
    ok = sum(r["verdict"] == "identical" for r in rs)
    bad = sum(r["verdict"] in ("CORRUPT", "HUNG") or r["verdict"].startswith("sender ok") for r in rs)
    failed = sum(r["verdict"].startswith("failed") for r in rs)
    secs = [r["seconds"] for r in rs]
    landed = sum(r["at_ms"] < 1000 * r["seconds"] for r in rs)
    lines.append(f"| {b} | {c} | {o} s | {w / 1000:g} s | {len(rs)} | {landed} | {ok} | {failed} | {bad} | "
                 f"{statistics.median(secs):.2f} | {max(secs):.2f} | {sum(r['reconnects'] for r in rs)} |")
exp = [r for r in runs if r["window_ms"] == short_window]
if exp:
    lines += ["", f"Outages of {expired_s} s against a {short_window / 1000:g} s window: the error each sender printed.", ""]
    for r in exp:
        lines.append(f"- {r['backend']}, outage at {r['at_ms']} ms on the {r['side']}'s side, exit "
                     f"{r['rc']} after {r['seconds']:.2f} s: {r['verdict']}")
open(out, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
