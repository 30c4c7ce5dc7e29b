#!/bin/bash
# interleaved rounds: kvwire 2p Q=small, kvwire 2p Q=32, perftest as is, perftest -e with kvwire settings
S=$1; N=$2; R=$3; QS=$4
export UCX_TLS=tcp
kv() { PORT=$((20000 + RANDOM % 20000)); ./raw2p server 127.0.0.1:$PORT $S $N 1 $1 > srv.out & SP=$!; sleep 0.3; ./raw2p client 127.0.0.1:$PORT $S $N 1 $1; wait $SP; cat srv.out; }
pt() { PORT=$((20000 + RANDOM % 20000)); ucx_perftest -t ucp_am_bw -s $S -n $N -p $PORT $1 > /dev/null 2>&1 & SP=$!; sleep 0.5
  ucx_perftest 127.0.0.1 -t ucp_am_bw -s $S -n $N -p $PORT $1 -f 2>&1 | tail -1 | awk '{printf "%.3f\n", $6*1.048576/1000}'; wait $SP; }
for r in $(seq 1 $R); do
  a=$(kv $QS); b=$(kv 32); c=$(pt ""); d=$(UCX_ZCOPY_THRESH=inf UCX_TCP_TX_SEG_SIZE=1m UCX_TCP_RX_SEG_SIZE=1m pt -e)
  echo "$S $r $a $b $c $d"
done
