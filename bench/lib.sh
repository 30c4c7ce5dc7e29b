# Shared pieces of the bench scripts (sourced, not run): error exit, repository-relative paths,
# the model's KV capture, profile and local references, and a veth pair between two network
# namespaces. A script sets ROOT, KVWIRE and WORK and defines SCRIPT (its name, for messages)
# before sourcing this file.

die() { echo "$SCRIPT: $*" >&2; exit 1; }

# A path inside the repository, relative to it (reports name no machine's layout).
rel() { case $1 in "$ROOT"/*) echo "${1#"$ROOT"/}" ;; *) echo "$1" ;; esac; }

need_kvwire() { [ -x "$KVWIRE" ] || die "no kvwire binary at $KVWIRE (set KVWIRE)"; }
need_netns() {
  [ "$(id -u)" = 0 ] || die "needs root (network namespaces, tc)"
  command -v ip >/dev/null && command -v tc >/dev/null || die "needs iproute2 (ip, tc)"
}

MODEL=$ROOT/models/kjv-gqa-6l/model.bin

# model_kv TOKENS: the project model's KV over TOKENS tokens of the eval text, fp16, kept in
# $WORK; prints its path.
model_kv() {
  local kv=$WORK/kv-$1.safetensors
  [ -s "$kv" ] || "$KVWIRE" capture --model "$MODEL" --text "$ROOT/models/data/kjv_eval.txt" \
    --tokens "$1" --dtype f16 --out "$kv" >/dev/null
  echo "$kv"
}

# model_profile: a profile calibrated on the model, kept in $WORK; prints its path.
model_profile() {
  local p
  p=$WORK/kjv-gqa-6l-$(sha256sum "$MODEL" | cut -c1-16).kvp
  [ -s "$p" ] || "$KVWIRE" calibrate --model "$MODEL" --text "$ROOT/models/data/kjv_calib.txt" \
    --out "$p" >/dev/null 2>&1
  echo "$p"
}

# local_refs KV PROFILE CODEC...: $WORK/ref-CODEC.safetensors = `kvwire encode` (512-token
# chunks) + `kvwire decode` of KV, what a receiver must write byte for byte.
local_refs() {
  local kv=$1 profile=$2 codec
  shift 2
  for codec in "$@"; do
    "$KVWIRE" encode --in "$kv" --codec "$codec" --profile "$profile" --chunk-tokens 512 \
      --out "$WORK/ref-$codec.kvw" >/dev/null
    "$KVWIRE" decode --in "$WORK/ref-$codec.kvw" --profile "$profile" \
      --out "$WORK/ref-$codec.safetensors" >/dev/null
  done
}

# veth_pair TAG SUBNET RATE: namespaces TAG-$$-a and TAG-$$-b joined by a veth pair, addresses
# SUBNET.1 and SUBNET.2 (/24), tbf at RATE on both ends unless RATE is none; removes leftovers
# of killed earlier runs of the same TAG first (their pid gone). Sets NS_A NS_B DEV_A DEV_B IP_A
# IP_B; veth_cleanup removes them.
veth_pair() {
  local tag=$1 subnet=$2 rate=$3 ns pid p
  NS_A=$tag-$$-a NS_B=$tag-$$-b DEV_A=$tag$$a DEV_B=$tag$$b IP_A=$subnet.1 IP_B=$subnet.2
  for ns in $(ip netns list | awk '{print $1}' | grep "^$tag-[0-9]*-[ab]\$" || true); do
    pid=${ns#"$tag"-}; pid=${pid%-*}
    if [ ! -d /proc/$pid ]; then
      for p in $(ip netns pids "$ns"); do kill -9 "$p" 2>/dev/null || true; done
      ip netns del "$ns"
    fi
  done
  ip netns add $NS_A
  ip netns add $NS_B
  ip link add $DEV_A netns $NS_A type veth peer name $DEV_B netns $NS_B
  ip -n $NS_A addr add $IP_A/24 dev $DEV_A
  ip -n $NS_B addr add $IP_B/24 dev $DEV_B
  for ns in $NS_A $NS_B; do ip -n $ns link set lo up; done
  ip -n $NS_A link set $DEV_A up
  ip -n $NS_B link set $DEV_B up
  # A burst of 256 KiB is ~2 ms at 1 Gbit/s: enough for the shaper's timer.
  if [ "$rate" != none ]; then
    ip netns exec $NS_A tc qdisc add dev $DEV_A root tbf rate "$rate" burst 256kb latency 50ms
    ip netns exec $NS_B tc qdisc add dev $DEV_B root tbf rate "$rate" burst 256kb latency 50ms
  fi
  veth_up
}

# veth_up: waits until both ends report the carrier.
veth_up() {
  for _ in $(seq 200); do
    ip -n $NS_A -br link show dev $DEV_A | grep -q LOWER_UP &&
      ip -n $NS_B -br link show dev $DEV_B | grep -q LOWER_UP && return 0
    sleep 0.05
  done
  die "the veth did not come up"
}

veth_cleanup() {
  local ns p
  for ns in $NS_A $NS_B; do
    for p in $(ip netns pids $ns 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
    ip netns del $ns 2>/dev/null
  done
  return 0
}

# new_key FILE: a fresh 32-byte pre-shared key, hex, mode 600.
new_key() {
  head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$1"
  chmod 600 "$1"
}
