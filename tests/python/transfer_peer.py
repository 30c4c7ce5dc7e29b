"""The receiving process of transfer_test.py: listens, prints its address, receives one paged
request into its own block ids, and saves the whole paged cache and what it was told.

Usage: transfer_peer.py '<json config>' (backend, key_file, out_dir, num_blocks, block_size,
block_ids, canary)."""

import json
import os
import sys

import numpy
import torch

import kvwire

TIMEOUT_MS = 30000


def main():
    cfg = json.loads(sys.argv[1])
    with kvwire.Receiver.listen("127.0.0.1:0", backend=cfg["backend"],
                                key_file=cfg["key_file"]) as rx:
        print(rx.address, flush=True)
        req = rx.next_request(timeout_ms=TIMEOUT_MS)
        layers, _, tokens, kv_heads, head_dim = req.shape
        cache = [torch.full((2, cfg["num_blocks"], cfg["block_size"], kv_heads, head_dim),
                            cfg["canary"], dtype=torch.float16) for _ in range(layers)]
        rx.set_destination(req.request_id, cache, block_ids=cfg["block_ids"])
        for layer in range(layers):
            rx.wait_layer(req.request_id, layer, timeout_ms=TIMEOUT_MS)
        rx.wait(req.request_id, timeout_ms=TIMEOUT_MS)
        stats = rx.stats(req.request_id)
        rx.release(req.request_id)
        numpy.save(os.path.join(cfg["out_dir"], "received.npy"),
                   numpy.stack([c.numpy() for c in cache]))
        with open(os.path.join(cfg["out_dir"], "request.json"), "w") as f:
            json.dump({"request_id": req.request_id, "shape": list(req.shape),
                       "dtype": req.dtype, "levels": req.levels, "peer": req.peer,
                       "user_data": req.user_data.hex(), "chunks": stats["chunks"]}, f)


if __name__ == "__main__":
    main()
