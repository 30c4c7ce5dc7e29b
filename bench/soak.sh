#!/usr/bin/env bash
# Soak: many senders, many concurrent requests, mixed codecs and random faults, for a fixed time.
#
# Two network namespaces joined by a veth pair shaped with tbf ($RATE on both ends); in one a tcp
# and a ucx `kvwire serve` (stall timeout $STALL_MS ms), in the other $SENDERS sender loops, each
# sending the project model's KV ($TOKENS tokens of the eval text, fp16) again and again, every
# transfer with a codec and a backend drawn at random. Meanwhile a fault loop waits a random
# 2..$FAULT_GAP_S s and injects one fault, drawn at random:
#   outage   the veth goes down for 0.5..$OUTAGE_MAX_S s, on a random side (senders must ride
#            it out: their reconnect window is 30 s);
#   kill     one running `kvwire send` is killed with SIGKILL (that transfer fails; the receiver
#            must fail its request within the stall timeout and free it).
# Every transfer that completes must equal a local `kvwire encode` + `kvwire decode` of the same
# KV byte for byte (a corruption otherwise); every failed transfer must be explained by a fault
# (its sender killed, or an outage longer than the window, which this soak never injects).
# The receivers' RSS is sampled every 5 s. Runs for $DURATION_S s, then reports transfers,
# bytes, failures by cause, corruptions and the RSS over time.
#
# Usage (root, Debian bookworm, iproute2): bench/soak.sh
# Environment: KVWIRE (build/bin/kvwire), DURATION_S (1800), SENDERS (4), TOKENS (4096),
# RATE (1gbit), CODECS ("fp16 int8 q4_0 kivi2 fraqtl@2 fraqtl@1"), BACKENDS ("tcp ucx"),
# FAULT_GAP_S (10), OUTAGE_MAX_S (4), STALL_MS (10000), SEED (1), WORK (build/soak),
# OUT (bench/results/soak: OUT.md and OUT.jsonl), KEEP_LOGS=1.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SCRIPT=soak.sh
KVWIRE=${KVWIRE:-$ROOT/build/bin/kvwire}
DURATION_S=${DURATION_S:-1800}
SENDERS=${SENDERS:-4}
TOKENS=${TOKENS:-4096}
RATE=${RATE:-1gbit}
CODECS=${CODECS:-"fp16 int8 q4_0 kivi2 fraqtl@2 fraqtl@1"}
BACKENDS=${BACKENDS:-"tcp ucx"}
FAULT_GAP_S=${FAULT_GAP_S:-10} OUTAGE_MAX_S=${OUTAGE_MAX_S:-4} STALL_MS=${STALL_MS:-10000}
SEED=${SEED:-1}
WORK=${WORK:-$ROOT/build/soak}
OUT=${OUT:-$ROOT/bench/results/soak}
source "$ROOT/bench/lib.sh"
need_netns
need_kvwire
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
RANDOM=$SEED
command_line="$(rel "$0") $*"
env_line="KVWIRE=$(rel "$KVWIRE") DURATION_S=$DURATION_S SENDERS=$SENDERS TOKENS=$TOKENS"
env_line+=" RATE=$RATE CODECS=\"$CODECS\" BACKENDS=\"$BACKENDS\" FAULT_GAP_S=$FAULT_GAP_S"
env_line+=" OUTAGE_MAX_S=$OUTAGE_MAX_S STALL_MS=$STALL_MS SEED=$SEED"

KV=$(model_kv "$TOKENS")
PROFILE=$(model_profile)
local_refs "$KV" "$PROFILE" $CODECS

LOGS=$WORK/logs-$$
PIDS=()
cleanup() {
  set +e
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  veth_cleanup
  wait 2>/dev/null
  [ "${KEEP_LOGS:-0}" = 1 ] && echo "logs in $LOGS" || rm -rf "$LOGS"
}
trap cleanup EXIT
veth_pair kvws 10.96.$(($$ % 250)) "$RATE"

mkdir -p "$LOGS/results"
new_key "$LOGS/key"
declare -A PORT=([tcp]=7401 [ucx]=7402)
UCX_ENV_A=(env UCX_TLS=tcp UCX_NET_DEVICES=$DEV_A)
UCX_ENV_B=(env UCX_TLS=tcp UCX_NET_DEVICES=$DEV_B)
declare -A SERVE_PID
for b in $BACKENDS; do
  mkdir -p "$LOGS/out-$b"
  ip netns exec $NS_A "${UCX_ENV_A[@]}" "$KVWIRE" serve --listen $IP_A:${PORT[$b]} --backend "$b" \
    --key-file "$LOGS/key" --profile "$PROFILE" --out-dir "$LOGS/out-$b" \
    --stall-timeout-ms "$STALL_MS" -v >"$LOGS/serve-$b.log" 2>&1 &
  SERVE_PID[$b]=$!
  PIDS+=($!)
done
for b in $BACKENDS; do
  for _ in $(seq 300); do grep -q "listening on" "$LOGS/serve-$b.log" && break; sleep 0.05; done
  grep -q "listening on" "$LOGS/serve-$b.log" || die "serve $b did not start"
done
# The PID of the serve process inside the namespace (ip netns exec may stay as its parent).
serve_pid() { pgrep -f -- "^$KVWIRE serve --listen $IP_A:${PORT[$1]}" | head -1; }

END=$(($(date +%s) + DURATION_S))
codecs=($CODECS) backends=($BACKENDS)

# sender LOOP: sends until the end; one JSON line per transfer into $LOGS/results/LOOP.jsonl.
sender() {
  local loop=$1 n=0
  RANDOM=$((SEED * 1000 + loop))
  while [ "$(date +%s)" -lt "$END" ]; do
    n=$((n + 1))
    local id=$((loop * 1000000 + n))
    local codec=${codecs[$((RANDOM % ${#codecs[@]}))]} b=${backends[$((RANDOM % ${#backends[@]}))]}
    local t0 rc=0
    t0=$(date +%s.%N)
    ip netns exec $NS_B "${UCX_ENV_B[@]}" timeout 300 "$KVWIRE" send \
      --connect $IP_A:${PORT[$b]} --backend "$b" --key-file "$LOGS/key" --in "$KV" \
      --codec "$codec" --profile "$PROFILE" --chunk-tokens 512 --request-id "$id" \
      >"$LOGS/send-$id.out" 2>"$LOGS/send-$id.err" || rc=$?
    local t1 verdict bytes=0
    t1=$(date +%s.%N)
    if [ $rc = 0 ]; then
      local got=$LOGS/out-$b/request-$id.safetensors
      for _ in $(seq 400); do [ -s "$got" ] && break; sleep 0.05; done
      if [ ! -s "$got" ]; then
        verdict="sender ok, receiver wrote nothing"
      elif cmp -s "$got" "$WORK/ref-$codec.safetensors"; then
        verdict=identical
      else
        verdict=CORRUPT
        cp "$got" "$LOGS/corrupt-$id.safetensors"
      fi
      rm -f "$got"
      bytes=$(sed -n 's/.*: [0-9]* chunks, \([0-9,]*\) bytes on the wire.*/\1/p' "$LOGS/send-$id.out" | tr -d ,)
    elif [ -e "$LOGS/killed-$id" ]; then
      verdict="killed (injected)"
    elif [ $rc = 124 ]; then
      verdict=HUNG
    else
      verdict="UNEXPLAINED FAILURE ($rc): $(tr '\n"\\' '   ' <"$LOGS/send-$id.err" | cut -c1-200)"
    fi
    printf '{"id": %d, "backend": "%s", "codec": "%s", "rc": %d, "seconds": %.3f, "wire_bytes": %d, "verdict": "%s"}\n' \
      "$id" "$b" "$codec" "$rc" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" \
      "${bytes:-0}" "$verdict" >>"$LOGS/results/$loop.jsonl"
    rm -f "$LOGS/send-$id.out" "$LOGS/send-$id.err"
  done
}

faults() {
  RANDOM=$((SEED * 7 + 3))
  while [ "$(date +%s)" -lt "$END" ]; do
    sleep $((2 + RANDOM % (FAULT_GAP_S - 1)))
    [ "$(date +%s)" -lt "$END" ] || break
    if [ $((RANDOM % 2)) = 0 ]; then
      local ns=$NS_A dev=$DEV_A side=receiver
      [ $((RANDOM % 2)) = 0 ] && ns=$NS_B dev=$DEV_B side=sender
      local ms=$((500 + RANDOM % (OUTAGE_MAX_S * 1000 - 499)))
      ip -n $ns link set $dev down
      sleep "$(awk -v m="$ms" 'BEGIN { printf "%.3f", m / 1000 }')"
      ip -n $ns link set $dev up
      veth_up
      printf '{"fault": "outage", "side": "%s", "ms": %d, "at": %s}\n' "$side" "$ms" "$(date +%s)" >>"$LOGS/faults.jsonl"
    else
      local victims pid id
      victims=($(pgrep -f -- "^$KVWIRE send --connect $IP_A" || true))  # not timeout, not ip
      [ ${#victims[@]} -gt 0 ] || continue
      pid=${victims[$((RANDOM % ${#victims[@]}))]}
      id=$( { tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null |
        sed -n 's/.*--request-id \([0-9]*\).*/\1/p' || true)
      [ -n "$id" ] || continue
      touch "$LOGS/killed-$id"
      kill -9 "$pid" 2>/dev/null || true
      printf '{"fault": "kill", "request": %s, "at": %s}\n' "$id" "$(date +%s)" >>"$LOGS/faults.jsonl"
    fi
  done
}

rss() {
  while [ "$(date +%s)" -lt "$END" ]; do
    local line="{\"t\": $(( $(date +%s) - END + DURATION_S ))"
    for b in $BACKENDS; do
      local p
      p=$(serve_pid "$b")
      line+=", \"$b\": $(awk '/^VmRSS:/ { print $2 }' "/proc/$p/status" 2>/dev/null || echo 0)"
    done
    echo "$line}" >>"$LOGS/rss.jsonl"
    sleep 5
  done
}

echo "soak: $SENDERS senders for $DURATION_S s (codecs: $CODECS; backends: $BACKENDS; link $RATE)"
loops=()
for ((l = 1; l <= SENDERS; ++l)); do sender $l & loops+=($!); done
faults & loops+=($!)
rss & loops+=($!)
for p in "${loops[@]}"; do wait "$p" || echo "soak.sh: a loop ended with status $?" >&2; done
sleep $((STALL_MS / 1000 + 2))  # killed requests: their stall timeout passes
for b in $BACKENDS; do
  p=$(serve_pid "$b")
  echo "{\"t\": \"end\", \"$b\": $(awk '/^VmRSS:/ { print $2 }' "/proc/$p/status")}" >>"$LOGS/rss.jsonl"
done
for b in $BACKENDS; do
  grep -c "failed: " "$LOGS/serve-$b.log" >"$LOGS/receiver-failed-$b" || true
done

# --- report ------------------------------------------------------------------------------------
cat "$LOGS"/results/*.jsonl >"$OUT.jsonl"
cp "$LOGS/rss.jsonl" "$OUT.rss.jsonl"
[ -e "$LOGS/faults.jsonl" ] && cp "$LOGS/faults.jsonl" "$OUT.faults.jsonl" || : >"$OUT.faults.jsonl"
python3 - "$OUT" "$command_line" "$env_line" "$LOGS" "$BACKENDS" <<'EOF'
import collections, datetime, json, platform, sys
out, cmd, env, logs, backends = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5].split()
runs = [json.loads(l) for l in open(out + ".jsonl")]
faults = [json.loads(l) for l in open(out + ".faults.jsonl")]
rss = [json.loads(l) for l in open(out + ".rss.jsonl")]
v = collections.Counter(r["verdict"].split(" (")[0] for r in runs)
bad = [r for r in runs if r["verdict"] not in ("identical", "killed (injected)")]
md = ["# Soak: concurrent senders, mixed codecs, random faults (bench/soak.sh)", "",
      f"Command: `{cmd.strip()}` with `{env}`  ",
      f"Date {datetime.datetime.utcnow().strftime('%Y-%m-%dT%H:%M:%SZ')}; {platform.machine()}; "
      "two network namespaces on one host, tbf on both veth ends.", "",
      f"**{len(runs)} transfers**, {sum(r['wire_bytes'] for r in runs):,} bytes on the wire by the "
      f"completed ones; faults injected: {sum(f['fault'] == 'outage' for f in faults)} outages, "
      f"{sum(f['fault'] == 'kill' for f in faults)} sender kills.", "",
      "| outcome | transfers |", "|---|---:|"]
md += [f"| {k} | {n} |" for k, n in v.most_common()]
md += ["", "| backend | codec | transfers | identical | killed | other | median s |", "|---|---|---:|---:|---:|---:|---:|"]
g = collections.defaultdict(list)
for r in runs:
    g[(r["backend"], r["codec"])].append(r)
for (b, c), rs in sorted(g.items()):
    ok = [r for r in rs if r["verdict"] == "identical"]
    secs = sorted(r["seconds"] for r in ok)
    med = secs[len(secs) // 2] if secs else float("nan")
    md.append(f"| {b} | {c} | {len(rs)} | {len(ok)} | "
              f"{sum(r['verdict'] == 'killed (injected)' for r in rs)} | "
              f"{len(rs) - len(ok) - sum(r['verdict'] == 'killed (injected)' for r in rs)} | {med:.2f} |")
outs = [f for f in faults if f["fault"] == "outage"]
if outs:
    md += ["", f"Outages: {len(outs)}, {min(f['ms'] for f in outs)}-{max(f['ms'] for f in outs)} ms, "
           f"{sum(f['side'] == 'sender' for f in outs)} on the sender's side."]
md += ["", "Receiver RSS (MiB) over the run, every 5 s, and after the last stall timeout:", "",
       "| backend | first | min | max | last sample | end |", "|---|---:|---:|---:|---:|---:|"]
for b in backends:
    series = [r[b] for r in rss if isinstance(r.get("t"), int) and b in r]
    end = [r[b] for r in rss if r.get("t") == "end" and b in r]
    if series:
        md.append(f"| {b} | {series[0] / 1024:.0f} | {min(series) / 1024:.0f} | {max(series) / 1024:.0f} | "
                  f"{series[-1] / 1024:.0f} | {end[0] / 1024 if end else float('nan'):.0f} |")
for b in backends:
    try:
        n = int(open(f"{logs}/receiver-failed-{b}").read().strip() or 0)
    except OSError:
        n = -1
    md.append(f"\n{b} receiver: {n} request(s) failed (killed senders' requests, after the stall timeout).")
md += ["", f"**Verdict:** {sum(r['verdict'] == 'CORRUPT' for r in runs)} corruption(s); "
       f"{len(bad)} transfer(s) neither identical nor explained by an injected fault."]
for r in bad[:10]:
    md.append(f"- request {r['id']} ({r['backend']}, {r['codec']}): {r['verdict']}")
open(out + ".md", "w").write("\n".join(md) + "\n")
print("\n".join(md))
sys.exit(1 if bad else 0)
EOF
