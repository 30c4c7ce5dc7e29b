#!/usr/bin/env bash
# Dead peers: a decode node killed and restarted in the middle of a transfer, a prefill node
# killed in the middle of one.
#
# On loopback, `kvwire serve` receives and `kvwire send` sends a synthetic KV cache of the
# project model's shape ($TOKENS tokens, fp16) at one codec per transfer (int8 and fraqtl@2 in
# turn; fraqtl with a profile calibrated on the model).
#
# Receiver restarts: at a random point from $KILL_MIN_MS to $KILL_MAX_MS ms after the receiver
# logged the request's begin (the sender has loaded its KV and connected), the receiver is killed with SIGKILL and a new one listens on the same address at once.
#   --on-receiver-restart resend ($RESEND_RUNS transfers per backend): the sender must learn that
#     the new receiver holds nothing of the request and send it again: it exits 0 and the new
#     receiver's KV equals a local `kvwire encode` + `kvwire decode`, byte for byte.
#   --on-receiver-restart fail ($FAIL_RUNS per backend): the sender must exit non-zero with one
#     error line that says the receiver restarted, or, when the killed receiver had acknowledged
#     nothing yet (nothing was lost), complete bit-identical.
#   Either way the killed receiver never leaves a KV behind that is not the whole one (serve
#   writes request-ID.safetensors.tmp and renames it once complete). Each killed receiver has
#   served one transfer first, so that it holds its KV cache and acknowledges from the start.
# Sender kills ($SENDER_RUNS per backend): one receiver (--stall-timeout-ms $STALL_MS) serves
# them all; each sender is killed with SIGKILL at a random point after its request began; the receiver must report the
# request failed within the stall timeout (plus a second), and its RSS after all of them must be
# back near its RSS after one complete transfer (within $RSS_SLACK_MIB MiB).
#
# Usage (Debian bookworm): bench/process_kills.sh
# Environment: KVWIRE (build/bin/kvwire), TOKENS (65536), BACKENDS ("tcp ucx"), RESEND_RUNS (20),
# FAIL_RUNS (10), SENDER_RUNS (10), KILL_MIN_MS (30), KILL_MAX_MS (180), STALL_MS (2000),
# RSS_SLACK_MIB (32), SEED (1), WORK (build/process_kills), OUT (bench/results/process_kills:
# OUT.md and OUT.jsonl), KEEP_LOGS=1.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SCRIPT=process_kills.sh
KVWIRE=${KVWIRE:-$ROOT/build/bin/kvwire}
TOKENS=${TOKENS:-65536}
BACKENDS=${BACKENDS:-"tcp ucx"}
RESEND_RUNS=${RESEND_RUNS:-20} FAIL_RUNS=${FAIL_RUNS:-10} SENDER_RUNS=${SENDER_RUNS:-10}
KILL_MIN_MS=${KILL_MIN_MS:-30} KILL_MAX_MS=${KILL_MAX_MS:-180}
STALL_MS=${STALL_MS:-2000} RSS_SLACK_MIB=${RSS_SLACK_MIB:-32}
SEED=${SEED:-1}
WORK=${WORK:-$ROOT/build/process_kills}
OUT=${OUT:-$ROOT/bench/results/process_kills}
CODECS=(int8 fraqtl@2)
source "$ROOT/bench/lib.sh"
need_kvwire
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
RANDOM=$SEED
command_line="$(rel "$0") $*"
env_line="KVWIRE=$(rel "$KVWIRE") TOKENS=$TOKENS BACKENDS=\"$BACKENDS\" RESEND_RUNS=$RESEND_RUNS"
env_line+=" FAIL_RUNS=$FAIL_RUNS SENDER_RUNS=$SENDER_RUNS KILL_MIN_MS=$KILL_MIN_MS"
env_line+=" KILL_MAX_MS=$KILL_MAX_MS STALL_MS=$STALL_MS RSS_SLACK_MIB=$RSS_SLACK_MIB SEED=$SEED"

# A synthetic KV of the model's shape (long enough to be killed in the middle of), the model's
# profile, and the local references.
KV=$WORK/synth-$TOKENS.safetensors
[ -s "$KV" ] || "$KVWIRE" synth --layers 6 --kv-heads 2 --head-dim 64 --tokens "$TOKENS" \
  --out "$KV" >/dev/null
PROFILE=$(model_profile)
local_refs "$KV" "$PROFILE" "${CODECS[@]}"

LOGS=$WORK/logs-$$
mkdir -p "$LOGS"
PIDS=()
cleanup() {
  set +e
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  [ "${KEEP_LOGS:-0}" = 1 ] && echo "logs in $LOGS" || rm -rf "$LOGS"
}
trap cleanup EXIT
new_key "$LOGS/key"
declare -A PORT=([tcp]=$((20000 + $$ % 20000)) [ucx]=$((20001 + $$ % 20000)))

# serve NAME BACKEND [ARGS...]: starts a receiver on the backend's port, logging to
# $LOGS/NAME.log, its KV dumps into $LOGS/NAME/; sets SERVE_PID.
serve() {
  local name=$1 b=$2
  shift 2
  mkdir -p "$LOGS/$name"
  "$KVWIRE" serve --listen 127.0.0.1:${PORT[$b]} --backend "$b" --key-file "$LOGS/key" \
    --profile "$PROFILE" --out-dir "$LOGS/$name" -v "$@" >"$LOGS/$name.log" 2>&1 &
  SERVE_PID=$!
  PIDS+=($SERVE_PID)
  for _ in $(seq 400); do grep -q "listening on" "$LOGS/$name.log" && return 0; sleep 0.025; done
  die "serve $name did not start: $(tail -3 "$LOGS/$name.log")"
}
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
# began LOG ID: waits (up to 60 s) until the receiver logged the begin of request ID.
began() {
  for _ in $(seq 1200); do grep -q "kvwire serve: request $2 from" "$1" && return 0; sleep 0.05; done
  return 1
}
kill_at() { awk -v a="$KILL_MIN_MS" -v b="$KILL_MAX_MS" -v r="$RANDOM" \
  'BEGIN { printf "%.3f", (a + (b - a) * r / 32767) / 1000 }'; }
json_line() { tee -a "$LOGS/runs.jsonl"; }
clean() { tr '\n"\\' '   ' | cut -c1-300; }

# --- receiver killed and restarted ----------------------------------------------------------------
id=0
for b in $BACKENDS; do
  for ((r = 0; r < RESEND_RUNS + FAIL_RUNS; ++r)); do
    id=$((id + 1))
    codec=${CODECS[$((r % 2))]}
    mode=resend
    [ $r -ge "$RESEND_RUNS" ] && mode=fail
    serve "first-$id" "$b"
    first=$SERVE_PID
    # A warm-up transfer first: serve keeps its KV cache for the next request of the same shape,
    # so the killed receiver acknowledges chunks from the start (a decode node's KV pool exists
    # before its requests; allocating 200 MB would hold back every acknowledgement).
    warm=$((900000 + id))
    "$KVWIRE" send --connect 127.0.0.1:${PORT[$b]} --backend "$b" --key-file "$LOGS/key" \
      --in "$KV" --codec int8 --chunk-tokens 512 --request-id $warm >/dev/null 2>&1 ||
      die "warm-up transfer to receiver first-$id failed"
    for _ in $(seq 400); do grep -q "^request $warm from .* -> " "$LOGS/first-$id.log" && break; sleep 0.05; done
    rm -f "$LOGS/first-$id/request-$warm.safetensors"
    at=$(kill_at)
    rc=0
    ( timeout 120 "$KVWIRE" send --connect 127.0.0.1:${PORT[$b]} --backend "$b" \
        --key-file "$LOGS/key" --in "$KV" --codec "$codec" --profile "$PROFILE" \
        --chunk-tokens 512 --request-id "$id" --on-receiver-restart "$mode" \
        >"$LOGS/send-$id.out" 2>"$LOGS/send-$id.err" ) &
    send=$!
    began "$LOGS/first-$id.log" "$id" || true
    sleep "$at"
    finished_first=0
    kill -0 $send 2>/dev/null || finished_first=1
    kill -9 "$first"
    wait "$first" 2>/dev/null || true
    serve "second-$id" "$b"
    second=$SERVE_PID
    wait $send || rc=$?
    got=$LOGS/second-$id/request-$id.safetensors
    if [ $rc = 0 ]; then
      for _ in $(seq 400); do grep -q "^request $id from .* -> " "$LOGS/second-$id.log" && break; sleep 0.05; done
    fi
    # Anything the killed receiver left must be whole (it never is: it dies before the end).
    left=none
    for f in "$LOGS/first-$id"/request-*.safetensors; do
      [ -e "$f" ] || continue
      cmp -s "$f" "$WORK/ref-$codec.safetensors" && left=whole || left=PARTIAL
    done
    # Done on the first receiver before the kill: it reported the request complete (decoded into
    # its KV cache), and may have been killed while writing its file.
    done_first=0
    grep -q "kvwire serve: request $id complete" "$LOGS/first-$id.log" && done_first=1
    if [ $finished_first = 1 ] || { [ $rc = 0 ] && [ ! -e "$got" ] && [ $done_first = 1 ]; }; then
      verdict="finished before the kill"
    elif [ $rc = 124 ]; then
      verdict=HUNG
    elif [ $mode = resend ]; then
      if [ $rc != 0 ]; then
        verdict="FAILED ($rc): $(grep '^kvwire send:' "$LOGS/send-$id.err" | clean)"
      elif [ ! -s "$got" ]; then
        verdict="SENDER OK, NO RECEIVER WROTE THE KV"
      elif cmp -s "$got" "$WORK/ref-$codec.safetensors"; then
        verdict=identical
      else
        verdict=CORRUPT
      fi
    else
      if [ $rc = 0 ] && cmp -s "$got" "$WORK/ref-$codec.safetensors"; then
        verdict="identical (nothing acknowledged before the kill)"
      elif [ $rc = 0 ]; then
        verdict="COMPLETED, NOT IDENTICAL"
      elif [ "$(grep -c '^kvwire send:' "$LOGS/send-$id.err")" = 1 ] &&
        grep '^kvwire send:' "$LOGS/send-$id.err" | grep -q "receiver restarted"; then
        verdict="clear error"
      else
        verdict="UNCLEAR ERROR ($rc): $(grep '^kvwire send:' "$LOGS/send-$id.err" | clean)"
      fi
    fi
    [ $left = PARTIAL ] && verdict="$verdict; KILLED RECEIVER LEFT A PARTIAL KV"
    kill "$second" 2>/dev/null || true
    wait "$second" 2>/dev/null || true
    printf '{"part": "receiver", "id": %d, "backend": "%s", "codec": "%s", "mode": "%s", "kill_s": %s, "rc": %d, "error": "%s", "verdict": "%s"}\n' \
      "$id" "$b" "$codec" "$mode" "$at" "$rc" "$(grep '^kvwire send:' "$LOGS/send-$id.err" | head -1 | clean)" \
      "$verdict" | json_line
  done
done

# --- sender killed --------------------------------------------------------------------------------
for b in $BACKENDS; do
  serve "stall-$b" "$b" --stall-timeout-ms "$STALL_MS" --discard
  recv=$SERVE_PID
  rss0=$(rss_kib $recv)
  id=$((id + 1))
  "$KVWIRE" send --connect 127.0.0.1:${PORT[$b]} --backend "$b" --key-file "$LOGS/key" \
    --in "$KV" --codec fraqtl@2 --profile "$PROFILE" --chunk-tokens 512 --request-id "$id" \
    >/dev/null 2>&1 || die "the warm-up transfer to the $b receiver failed"
  for _ in $(seq 400); do grep -q "^request $id from .* -> " "$LOGS/stall-$b.log" && break; sleep 0.05; done
  rss_warm=$(rss_kib $recv)
  rss_peak=$rss_warm
  for ((r = 0; r < SENDER_RUNS; ++r)); do
    id=$((id + 1))
    codec=${CODECS[$((r % 2))]}
    at=$(kill_at)
    "$KVWIRE" send --connect 127.0.0.1:${PORT[$b]} --backend "$b" --key-file "$LOGS/key" \
      --in "$KV" --codec "$codec" --profile "$PROFILE" --chunk-tokens 512 --request-id "$id" \
      >/dev/null 2>&1 &
    send=$!
    began "$LOGS/stall-$b.log" "$id" || true
    sleep "$at"
    finished_first=0
    kill -0 $send 2>/dev/null || finished_first=1
    t0=$(date +%s.%N)
    kill -9 $send 2>/dev/null || true
    wait $send 2>/dev/null || true
    rss_peak=$(( $(rss_kib $recv) > rss_peak ? $(rss_kib $recv) : rss_peak ))
    failed_s=-1
    for _ in $(seq $((STALL_MS / 50 + 40))); do
      if grep -q "request $id from .* failed" "$LOGS/stall-$b.log"; then
        failed_s=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
        break
      fi
      grep -q "^request $id from .* -> " "$LOGS/stall-$b.log" && break
      sleep 0.05
    done
    if [ $finished_first = 1 ] || grep -q "^request $id from .* -> " "$LOGS/stall-$b.log"; then
      verdict="finished before the kill"
    elif [ "$failed_s" = -1 ]; then
      verdict="NOT FAILED within the stall timeout + 2 s"
    else
      verdict="failed after ${failed_s} s: $(grep "request $id from .* failed" "$LOGS/stall-$b.log" | head -1 | sed 's/.*failed: //' | clean)"
    fi
    printf '{"part": "sender", "id": %d, "backend": "%s", "codec": "%s", "kill_s": %s, "failed_after_s": %s, "rss_kib": %d, "verdict": "%s"}\n' \
      "$id" "$b" "$codec" "$at" "$failed_s" "$(rss_kib $recv)" "$verdict" | json_line
  done
  sleep 1
  rss_end=$(rss_kib $recv)
  ok=yes
  [ $((rss_end - rss_warm)) -le $((RSS_SLACK_MIB * 1024)) ] || ok=NO
  printf '{"part": "rss", "backend": "%s", "rss_start_kib": %d, "rss_after_one_transfer_kib": %d, "rss_peak_kib": %d, "rss_end_kib": %d, "back_to_baseline": "%s"}\n' \
    "$b" "$rss0" "$rss_warm" "$rss_peak" "$rss_end" "$ok" | json_line
  kill $recv 2>/dev/null || true
  wait $recv 2>/dev/null || true
done

# --- report --------------------------------------------------------------------------------------
cp "$LOGS/runs.jsonl" "$OUT.jsonl"
python3 - "$OUT.jsonl" "$OUT.md" "$command_line" "$env_line" <<'EOF'
import collections, datetime, json, platform, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
md = ["# Dead peers: receiver killed and restarted, sender killed (bench/process_kills.sh)", "",
      f"Command: `{sys.argv[3].strip()}` with `{sys.argv[4]}`  ",
      f"Date {datetime.datetime.utcnow().strftime('%Y-%m-%dT%H:%M:%SZ')}; {platform.machine()}, "
      "loopback, `kvwire serve` and `kvwire send` as separate processes, SIGKILL.", ""]
md += ["## Receiver killed mid-transfer, a new one on the same address", "",
       "| backend | on restart | codec | transfers | verdicts |", "|---|---|---|---:|---|"]
groups = collections.OrderedDict()
for r in rows:
    if r["part"] == "receiver":
        groups.setdefault((r["backend"], r["mode"], r["codec"]), []).append(r)
for (b, mode, codec), rs in groups.items():
    v = collections.Counter(r["verdict"] for r in rs)
    md.append(f"| {b} | {mode} | {codec} | {len(rs)} | " +
              "; ".join(f"{k}: {n}" for k, n in v.most_common()) + " |")
errors = sorted({r["error"] for r in rows if r["part"] == "receiver" and r["mode"] == "fail" and r["error"]})
if errors:
    md += ["", "The sender's error with resending off (each distinct line):", ""]
    md += [f"- `{e}`" for e in errors[:4]]
md += ["", "## Sender killed mid-transfer", "",
       "| backend | codec | transfers | verdicts | failed after (s), max |", "|---|---|---:|---|---:|"]
groups = collections.OrderedDict()
for r in rows:
    if r["part"] == "sender":
        groups.setdefault((r["backend"], r["codec"]), []).append(r)
for (b, codec), rs in groups.items():
    v = collections.Counter(r["verdict"].split(":")[0] if r["verdict"].startswith("failed after")
                            else r["verdict"] for r in rs)
    v = collections.Counter("failed within the stall timeout" if k.startswith("failed after") else k
                            for k in v.elements())
    worst = max((r["failed_after_s"] for r in rs), default=-1)
    md.append(f"| {b} | {codec} | {len(rs)} | " +
              "; ".join(f"{k}: {n}" for k, n in v.most_common()) + f" | {worst:.2f} |")
md += ["", "Receiver RSS (KiB): at start, after one complete transfer, the highest seen during the "
       "killed transfers, and a second after the last one.", "",
       "| backend | start | after one transfer | peak | end | back to baseline |", "|---|---:|---:|---:|---:|:-:|"]
for r in rows:
    if r["part"] == "rss":
        md.append(f"| {r['backend']} | {r['rss_start_kib']:,} | {r['rss_after_one_transfer_kib']:,} | "
                  f"{r['rss_peak_kib']:,} | {r['rss_end_kib']:,} | {r['back_to_baseline']} |")
bad = [r for r in rows if any(w in r.get("verdict", "") + r.get("back_to_baseline", "")
                              for w in ("HUNG", "CORRUPT", "FAILED", "COMPLETED", "UNCLEAR",
                                        "PARTIAL", "NOT IDENTICAL", "NOT FAILED", "NO RECEIVER",
                                        "NO"))]
md += ["", f"**Verdict:** {len(bad)} bad outcome(s) of {len(rows)} rows "
       "(hung, corrupt, failed with resending on, completed wrong with it off, an unclear error, "
       "a partial KV, a request the receiver did not fail, memory not back)."]
open(sys.argv[2], "w").write("\n".join(md) + "\n")
print("\n".join(md))
sys.exit(1 if bad else 0)
EOF
