#!/usr/bin/env bash
# README command 1: install what is missing, build, then hand a prompt's KV cache from a prefill
# process to a decode process on loopback (examples/prefill_decode_handoff) with the project's
# model: over tcp and ucx, at fp16 (must reproduce the single-process text exactly), with fraqtl
# at 2 bits/element and with q4_0 for comparison; then the same handoff over a link shaped to
# 1 Gbit/s (a veth pair between two network namespaces, tbf on both ends; needs root, `ip netns`
# and `tc`, else skipped with the reason), and over that link a long context's KV (8,192 tokens)
# handed off whole with `kvwire send` / `kvwire serve`; then a live context migration between
# two decode processes (examples/context_migration). Ends with summary tables.
# Environment: KVWIRE_BUILD_DIR (default build), KVWIRE_DEMO_OUT (default <build>/demo),
# KVWIRE_DEMO_NO_NETNS=1 (skip the shaped-link part even where it could run);
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
rm -rf "$out/bulk"

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

# 3. The same handoff over a link shaped to 1 Gbit/s: network namespaces A (decode) and B
# (prefill) joined by a veth pair with a tbf qdisc on both ends, tcp. The namespaces, the veth
# pair and its 10.x.y.0/24 addresses (x.y from this shell's pid) exist only inside this run's
# namespaces; the host's interfaces are never touched. Both namespaces are deleted when this
# part ends and, by the trap, on any exit (error, Ctrl-C).
# The default prompt's KV (~200 KB at fp16) needs under 2 ms of such a link, so this part uses
# a prompt as long as the model's trained context (512 tokens of models/data/kjv_eval.txt).
# Each codec runs 3 times, codecs interleaved; the summary shows the median.
shaped_tokens=512 shaped_runs=3
shaped_skip=""
if [ "${KVWIRE_DEMO_NO_NETNS:-0}" = 1 ]; then
  shaped_skip="KVWIRE_DEMO_NO_NETNS=1 is set"
elif [ "$(id -u)" != 0 ]; then
  shaped_skip="not root (network namespaces and tc qdiscs need root)"
elif ! ip netns list >/dev/null 2>&1; then
  shaped_skip="no \`ip netns\` here (iproute2 missing?)"
elif ! tc qdisc show dev lo >/dev/null 2>&1; then
  shaped_skip="no \`tc\` here (iproute2 missing?)"
fi
ns_a=kvwd-$$-a ns_b=kvwd-$$-b dev_a=kvwd$$a dev_b=kvwd$$b  # device names <= 15 characters
net=10.$((($$ >> 8) & 255)).$(($$ & 255))
ip_a=$net.1 ip_b=$net.2
netns_down() {  # deletes this run's namespaces (and so the veth pair), killing what runs there
  local ns p
  for ns in "$ns_a" "$ns_b"; do
    [ -e "/run/netns/$ns" ] || continue
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
}
netns_up() {  # on failure: prints the command that failed and what it said, returns 1
  local c msg
  local cmds=(
    "ip netns add $ns_a" "ip netns add $ns_b"
    "ip link add $dev_a netns $ns_a type veth peer name $dev_b netns $ns_b"
    "ip -n $ns_a addr add $ip_a/24 dev $dev_a" "ip -n $ns_b addr add $ip_b/24 dev $dev_b"
    "ip -n $ns_a link set lo up" "ip -n $ns_b link set lo up"
    "ip -n $ns_a link set $dev_a up" "ip -n $ns_b link set $dev_b up"
    # 128 KiB of burst is ~1 ms at 1 Gbit/s: enough for the shaper's timer, small per transfer.
    "ip netns exec $ns_a tc qdisc add dev $dev_a root tbf rate 1gbit burst 128kb latency 50ms"
    "ip netns exec $ns_b tc qdisc add dev $dev_b root tbf rate 1gbit burst 128kb latency 50ms")
  for c in "${cmds[@]}"; do
    msg=$($c 2>&1) || { echo "$c: $msg"; return 1; }
  done
  for _ in $(seq 100); do  # the carrier follows `link set up` a little later
    ip -n "$ns_a" -br link show dev "$dev_a" | grep -q LOWER_UP &&
      ip -n "$ns_b" -br link show dev "$dev_b" | grep -q LOWER_UP && return 0
    sleep 0.05
  done
  echo "the veth pair has no carrier after 5 s"
  return 1
}
if [ -z "$shaped_skip" ]; then
  trap netns_down EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  # Namespaces of an earlier run that was killed (its pid gone): what runs there is killed too.
  for ns in $(ip netns list | awk '{print $1}' | grep -E '^kvwd-[0-9]+-[ab]$' || true); do
    pid=${ns#kvwd-} && pid=${pid%-*}
    [ -d "/proc/$pid" ] && continue
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
  if ! why=$(netns_up); then
    shaped_skip="could not set up the namespaces: $why"
    netns_down
  fi
fi
echo
if [ -n "$shaped_skip" ]; then
  echo "== 3. prefill -> decode handoff over a 1 Gbit/s link: skipped, $shaped_skip"
else
  shaped_prompt=$(head -c "$shaped_tokens" models/data/kjv_eval.txt)  # one token per byte
  echo "== 3. prefill -> decode handoff over a 1 Gbit/s link (veth $ip_b -> $ip_a, tbf both ends)"
  echo "   with a longer prompt: the first $shaped_tokens tokens of models/data/kjv_eval.txt (the" \
    "model's trained context), so that the KV is big enough for the link to matter;" \
    "$shaped_runs runs per codec"
  for run in $(seq "$shaped_runs"); do
    for codec in fp16 q4_0 fraqtl@2; do
      echo
      echo "== 3. prefill -> decode handoff, 1 Gbit/s veth, tcp, $codec (run $run of $shaped_runs)"
      extra=()
      [[ $codec == fraqtl* ]] && extra=(--profile "$profile")
      "$bin/prefill_decode_handoff" --model "$model" --backend tcp --codec "$codec" \
        "${extra[@]}" --prompt "$shaped_prompt" --new-tokens 48 --decode-netns "$ns_a" \
        --prefill-netns "$ns_b" --listen-address "$ip_a" \
        --json "$out/shaped-tcp-$codec-run$run.json"
    done
  done
  # A long context handed off whole: the model's KV over 16 consecutive 512-token windows of
  # the eval text (8,192 tokens, 25 MB at fp16; keys re-rotated to their positions), sent by
  # `kvwire send` in B to `kvwire serve` in A. Here the link, not the prefill, sets the pace.
  echo
  echo "== 3b. a long context handed off whole over the same link: 16 x 512 tokens, kvwire send -> serve"
  bulk=$out/bulk
  mkdir -p "$bulk"
  windows=()
  for w in $(seq 0 15); do
    "$bin/kvwire" capture --model "$model" --text models/data/kjv_eval.txt --offset $((w * 512)) \
      --tokens 512 --dtype f16 --out "$bulk/w$w.safetensors" >/dev/null
    windows+=("$bulk/w$w.safetensors")
  done
  /usr/bin/python3 bench/concat_kv_windows.py "$bulk/kv.safetensors" "${windows[@]}" >/dev/null
  head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$bulk/key"
  chmod 600 "$bulk/key"
  ip netns exec "$ns_a" "$bin/kvwire" serve --listen "$ip_a:47810" --backend tcp \
    --key-file "$bulk/key" --discard --profile "$profile" >"$bulk/serve.log" 2>&1 &
  serve_pid=$!
  for _ in $(seq 100); do grep -q "listening on" "$bulk/serve.log" && break; sleep 0.05; done
  id=0
  for run in 0 $(seq "$shaped_runs"); do  # run 0: a warm-up, not reported
    for codec in fp16 fraqtl@2; do
      id=$((id + 1))
      extra=()
      [[ $codec == fraqtl* ]] && extra=(--profile "$profile")
      json="$bulk/send-$codec-run$run.json"
      [ "$run" = 0 ] && json="$bulk/warmup-$codec.json"
      ip netns exec "$ns_b" "$bin/kvwire" send --connect "$ip_a:47810" --backend tcp \
        --key-file "$bulk/key" --in "$bulk/kv.safetensors" --codec "$codec" "${extra[@]}" \
        --chunk-tokens 2048 --request-id "$id" --json "$json" >"$bulk/send-$id.log" 2>&1 ||
        { echo "kvwire send $codec failed:"; cat "$bulk/send-$id.log"; exit 1; }
    done
  done
  rm -f "$bulk"/w*.safetensors
  # Stopped and reaped here, so the shell does not report it as killed when netns_down clears
  # the namespace.
  kill "$serve_pid" 2>/dev/null || true
  wait "$serve_pid" 2>/dev/null || true
  netns_down
fi

# 4. Context migration A -> B while A keeps generating, tcp, fp16 and fraqtl@2.
for codec in fp16 fraqtl@2; do
  echo
  echo "== 4. context migration, tcp, $codec"
  extra=()
  [[ $codec == fraqtl* ]] && extra=(--profile "$profile")
  "$bin/context_migration" --model "$model" --backend tcp --codec "$codec" "${extra[@]}" \
    --new-tokens 64 --migrate-after 16 --json "$out/migration-tcp-$codec.json"
done

echo
runs_note="one run each"
[ -z "$shaped_skip" ] && runs_note="one run each on loopback, the median of $shaped_runs on the 1 Gbit/s link"
echo "== 5. summary ($(nproc) cores; times are wall clock on this machine, $runs_note)"
python3 - "$out" "$shaped_skip" <<'EOF'
import glob, json, os, statistics, sys
out, shaped_skip = sys.argv[1], sys.argv[2]
def load(pattern):
    return [json.load(open(p)) for p in sorted(glob.glob(os.path.join(out, pattern)))]
yes = lambda b: "yes" if b else "no"
# Loopback: one run per (backend, codec). Shaped link: several runs per codec, each timing the
# median over its runs (the other fields are the same in every run: same KV, same codec).
rows = [("loopback", r, None) for r in load("handoff-*.json")]
shaped = {}
for r in load("shaped-*.json"):
    shaped.setdefault(r["codec"], []).append(r)
med = lambda runs, k: statistics.median(r[k] for r in runs)
for codec in ("fp16", "q4_0", "fraqtl@2"):
    if codec in shaped:
        rows.append(("1 Gbit/s veth", shaped[codec][0], shaped[codec]))
print("prefill -> decode handoff (48 tokens generated; KV of all but the last prompt token)")
fmt = "%-13s %-7s %-8s %6s %11s %6s %9s %13s %22s %7s %6s %5s"
print(fmt % ("link", "backend", "codec", "prompt", "wire bytes", "ratio", "bits/elem", "KV-ready B ms",
             "KV-ready e2e ms", "tail ms", "top-1", "equal"))
for link, r, runs in rows:
    if runs:
        e2e = [x["kv_ready_end_to_end_ms"] for x in runs]
        ready_b = "%.1f" % med(runs, "kv_ready_receiver_ms")
        ready = "%.1f (%.1f-%.1f)" % (statistics.median(e2e), min(e2e), max(e2e))
        tail = "%.1f" % med(runs, "kv_ready_after_last_layer_ms")
        equal = all(x["text_equal"] for x in runs)
    else:
        ready_b, ready = "%.1f" % r["kv_ready_receiver_ms"], "%.1f" % r["kv_ready_end_to_end_ms"]
        tail, equal = "%.1f" % r["kv_ready_after_last_layer_ms"], r["text_equal"]
    print(fmt % (link, r["backend"], r["codec"], r["prompt_tokens"],
                 "{:,}".format(r["wire_bytes"] + r["header_bytes"]), "%.2fx" % r["ratio_vs_fp16"],
                 "%.3f" % r["bits_per_element"], ready_b, ready, tail,
                 "%.1f%%" % (100 * r["top1_teacher_forced"]), yes(equal)))
if shaped_skip:
    print("1 Gbit/s veth: skipped (%s)" % shaped_skip)
elif "fp16" in shaped and "fraqtl@2" in shaped:
    f, q = shaped["fp16"], shaped["fraqtl@2"]
    fe = [x["kv_ready_end_to_end_ms"] for x in f]
    qe = [x["kv_ready_end_to_end_ms"] for x in q]
    fm, qm = statistics.median(fe), statistics.median(qe)
    overlap = min(qe) <= max(fe) and min(fe) <= max(qe)
    fp16_bytes = f[0]["wire_bytes"] + f[0]["header_bytes"]
    print("1 Gbit/s veth, %d-token prompt: fraqtl@2 KV-ready e2e %.1f ms vs fp16 %.1f ms (medians):"
          " fraqtl@2 is %s (%.2fx fp16's time%s)."
          % (f[0]["prompt_tokens"], qm, fm, "faster" if qm < fm else "not faster", qm / fm,
             "; the runs' ranges overlap" if overlap else ""))
    print("  The link carries fp16's %s bytes in %.1f ms; A's prefill took %.1f ms (median), and"
          " each layer crosses while later layers compute, so the link shows only in the tail"
          " (fp16 %.1f ms, fraqtl@2 %.1f ms)."
          % ("{:,}".format(fp16_bytes), fp16_bytes * 8 / 1e6, med(f, "prefill_ms"),
             med(f, "kv_ready_after_last_layer_ms"), med(q, "kv_ready_after_last_layer_ms")))
    bulk = {}
    for path in sorted(glob.glob(os.path.join(out, "bulk", "send-*-run*.json"))):
        with open(path) as fh:
            j = json.load(fh)
        bulk.setdefault(j["levels"][0]["codec"], []).append(j)
    if "fp16" in bulk and "fraqtl@2" in bulk:
        print()
        print("a long context handed off whole over the 1 Gbit/s veth (kvwire send -> serve, tcp;"
              " %d x %d x %d x %d tokens x layers x kv heads x head_dim)"
              % tuple(bulk["fp16"][0]["shape"][k] for k in ("tokens", "layers", "kv_heads", "head_dim")))
        fmt = "%-9s %12s %7s %10s %24s"
        print(fmt % ("codec", "wire bytes", "ratio", "bits/elem", "KV-ready ms (range)"))
        t = {}
        for codec in ("fp16", "fraqtl@2"):
            runs = bulk[codec]
            s = [1000 * x["send_s"] for x in runs]
            t[codec] = statistics.median(s)
            print(fmt % (codec, "{:,}".format(runs[0]["wire_bytes"]),
                         "%.2fx" % (runs[0]["raw_bytes"] / runs[0]["wire_bytes"]),
                         "%.3f" % runs[0]["wire_bits_per_element"],
                         "%.1f (%.1f-%.1f)" % (t[codec], min(s), max(s))))
        print("  fraqtl@2 is ready in %.2fx fp16's time (%s): send_s of `kvwire send --json`, from"
              " Open() to every chunk decoded into the receiver's cache, encode and decode included;"
              " median of %d runs." % (t["fraqtl@2"] / t["fp16"],
              "faster" if t["fraqtl@2"] < t["fp16"] else "NOT faster", len(bulk["fp16"])))
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

link: loopback (127.0.0.1), or a veth pair between two network namespaces of this host with
tbf at 1 Gbit/s on both ends (decode in one, prefill in the other; the prompt is longer there).
wire bytes: every byte of chunk traffic (chunk frames + descriptors) plus the stream header;
ratio = fp16 bytes of the same KV / wire bytes; bits/elem = wire bytes x 8 / elements (all-in).
KV-ready B: the decode process, from the request's first message to the last layer decoded;
KV-ready e2e: from the prefill process starting the prefill (connection and model already up)
to the last layer decoded on B, one monotonic clock for both processes (same host); on the
shaped link the median over the runs, (fastest-slowest) after it.
tail: from A computing the last layer's K/V (that layer is sent at once) to B having decoded
it: what the transfer adds once A's KV exists (earlier layers cross while later ones compute).
top-1: B's argmax agreement with the single-process (float32) run, teacher-forced on its tokens.
equal: B's greedy text (after the migration: A's tokens then B's) equals the single-process run;
required at fp16 (the programs exit non-zero otherwise). Results as JSON in $out/.
EOF
