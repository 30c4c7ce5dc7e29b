#!/bin/bash
S=$1; N=$2; R=$3
export UCX_TLS=tcp
for r in $(seq 1 $R); do
  PORT=$((20000 + RANDOM % 20000)); ./raw2p server 127.0.0.1:$PORT $S $N 1 > srv.out & SP=$!; sleep 0.3; ./raw2p client 127.0.0.1:$PORT $S $N 1; wait $SP; k=$(cat srv.out)
  PORT=$((20000 + RANDOM % 20000))
  pe=$(UCX_ZCOPY_THRESH=inf UCX_TCP_TX_SEG_SIZE=1m UCX_TCP_RX_SEG_SIZE=1m bash -c "ucx_perftest -t ucp_am_bw -s $S -n $N -p $PORT -e > /dev/null 2>&1 & sleep 0.5; ucx_perftest 127.0.0.1 -t ucp_am_bw -s $S -n $N -p $PORT -e -f 2>&1 | tail -1 | awk '{printf \"%.3f\", \$6*1.048576/1000}'; wait")
  echo "$S $r $k $pe"
done
