"""A stand-in for the two vLLM engines of a prefill/decode pair, driving kvwire.vllm's connector
with the calls vLLM makes, in vLLM's order (scheduler, then worker, layer by layer), on paged
CPU torch caches.

Imported by vllm_connector_test.py (the decode engine, in the test process); run as a script it
is the prefill engine: ``vllm_harness.py '<json config>'``. It then talks over its pipes:
stdout lines ``ready``, ``pushed <layer> <monotonic seconds>``, ``done <json>``; stdin line
``layer0`` (the decode side has layer 0) releases the push of the last layer when
``wait_for_layer0`` is set."""

import json
import os
import random
import select
import sys
import time
import types

import torch

import kvwire
import kvwire.vllm

LAYERS, HEADS, DIM, BLOCK = 4, 2, 64, 16
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def vllm_config(role, extra):
    """The parts of a VllmConfig the connector reads."""
    return types.SimpleNamespace(
        kv_transfer_config=types.SimpleNamespace(kv_role=role, kv_connector_extra_config=extra),
        cache_config=types.SimpleNamespace(block_size=BLOCK))


class Request:
    """The parts of a vLLM Request the connector reads."""

    def __init__(self, request_id, prompt, params):
        self.request_id = request_id
        self.prompt_token_ids = list(range(prompt))
        self.num_computed_tokens = 0
        self.kv_transfer_params = params


class Blocks:
    """A KVCacheBlocks: block ids per KV cache group (one group here)."""

    def __init__(self, ids):
        self.ids = list(ids)

    def get_block_ids(self):
        return (self.ids,)


def make_requests(count, seed):
    """count requests: (request id, transfer id, prompt tokens, tokens the decode side holds,
    data seed). Lengths span 1..4096, the edges always included; about a third of the requests
    hit a block-aligned prefix on the decode side."""
    rng = random.Random(seed)
    lengths = [1, 2, 16, 17, 4096] + [rng.randint(1, 4096) for _ in range(count - 5)]
    out = []
    for i, n in enumerate(lengths[:count]):
        cached = (rng.randint(0, n - 2) // BLOCK) * BLOCK if n > BLOCK + 1 and i % 3 == 0 else 0
        out.append({"id": f"req-{seed}-{i}", "tid": 1000 + i, "prompt": n, "cached": cached,
                    "seed": seed * 100 + i})
    return out


def source_kv(req, dtype):
    """The request's whole KV, (layers, 2, prompt, heads, dim): what both sides agree on."""
    g = torch.Generator().manual_seed(req["seed"])
    return torch.randn(LAYERS, 2, req["prompt"], HEADS, DIM, generator=g).to(DTYPES[dtype])


def make_cache(layout, order, num_blocks, dtype, fill):
    """Per-layer caches as vLLM allocates them: flash_attn (2, num_blocks, block, heads, dim) or
    flashinfer (num_blocks, 2, ...); HND allocated heads before slots and permuted to that shape."""
    caches = {}
    for layer in range(LAYERS):
        outer = (2, num_blocks) if layout == "flash_attn" else (num_blocks, 2)
        if order == "NHD":
            t = torch.full((*outer, BLOCK, HEADS, DIM), fill, dtype=DTYPES[dtype])
        else:
            t = torch.full((*outer, HEADS, BLOCK, DIM), fill,
                           dtype=DTYPES[dtype]).permute(0, 1, 3, 2, 4)
        caches[f"model.layers.{layer}.self_attn.attn"] = t
    return caches


def _index(block_ids, begin, end):
    t = torch.arange(begin, end)
    return torch.tensor(block_ids)[t // BLOCK], t % BLOCK


def write_tokens(cache_layer, layout, block_ids, begin, end, values):
    """cache[tokens begin..end) = values (2, end - begin, heads, dim)."""
    b, s = _index(block_ids, begin, end)
    if layout == "flash_attn":
        cache_layer[:, b, s] = values
    else:
        cache_layer[b, :, s] = values.transpose(0, 1)


def read_tokens(cache_layer, layout, block_ids, begin, end):
    """(2, end - begin, heads, dim) of the cache's tokens begin..end."""
    b, s = _index(block_ids, begin, end)
    if layout == "flash_attn":
        return cache_layer[:, b, s]
    return cache_layer[b, :, s].transpose(0, 1)


def allocate(requests, num_blocks, seed):
    """Scattered block ids per request from a shuffled pool."""
    pool = list(range(num_blocks))
    random.Random(seed).shuffle(pool)
    out = {}
    for r in requests:
        n = (r["prompt"] + BLOCK - 1) // BLOCK
        out[r["id"]], pool = pool[:n], pool[n:]
    return out


def blocks_needed(requests):
    return sum((r["prompt"] + BLOCK - 1) // BLOCK for r in requests)


class LineReader:
    """Lines of a pipe with a bound on each wait. Reads the descriptor itself: a buffered file's
    readline may take several lines at once, after which select() no longer sees the rest."""

    def __init__(self, stream):
        self.fd = stream.fileno()
        self.buf = b""
        self.eof = False

    def read_line(self, timeout_s):
        """The next line without its newline; "" after timeout_s or at end of file."""
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self.buf and not self.eof:
            ready, _, _ = select.select([self.fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                return ""
            chunk = os.read(self.fd, 65536)
            self.eof = not chunk
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode().strip()


def run_prefill(cfg):
    """The prefill engine: one step that prefills every request and pushes it layer by layer."""
    requests = cfg["requests"]
    extra = dict(cfg["extra"], peer_address=cfg["peer_address"])
    sched = kvwire.vllm.KvwireConnector(vllm_config("kv_producer", extra), "SCHEDULER")
    worker = kvwire.vllm.KvwireConnector(vllm_config("kv_producer", extra), "WORKER")
    num_blocks = blocks_needed(requests) + 40
    caches = make_cache(cfg["layout"], cfg["order"], num_blocks, cfg["dtype"], 0.0)
    worker.register_kv_caches(caches)
    blocks = allocate(requests, num_blocks, cfg["seed"] + 1)
    print("ready", flush=True)
    stdin = LineReader(sys.stdin)

    # Scheduler: every request is new, computes its whole prompt in this step.
    vreqs = {}
    for r in requests:
        params = {"do_remote_decode": True, "transfer_id": r["tid"],
                  "remote_cached_tokens": r["cached"]}
        req = vreqs[r["id"]] = Request(r["id"], r["prompt"], params)
        assert sched.get_num_new_matched_tokens(req, 0) == (0, False)
        sched.update_state_after_alloc(req, Blocks(blocks[r["id"]]), 0)
    out = types.SimpleNamespace(num_scheduled_tokens={r["id"]: r["prompt"] for r in requests},
                                scheduled_cached_reqs=None)
    meta = sched.build_connector_meta(out)
    assert set(meta.reqs_to_send) == set(vreqs), "every prefill completes in this step"

    # Worker: the forward pass, layer by layer.
    sources = {r["id"]: source_kv(r, cfg["dtype"]) for r in requests}
    worker.bind_connector_metadata(meta)
    worker.start_load_kv(None)
    names = list(caches)
    pushed_last_at = None
    for layer, name in enumerate(names):
        for r in requests:  # attention writes the layer's KV into the cache
            write_tokens(caches[name], cfg["layout"], blocks[r["id"]], 0, r["prompt"],
                         sources[r["id"]][layer])
        if layer == len(names) - 1 and cfg.get("wait_for_layer0"):
            got = stdin.read_line(60)
            print(f"signal {got or 'none'}", flush=True)
        if layer == len(names) - 1:
            pushed_last_at = time.monotonic()
        worker.save_kv_layer(name, caches[name], None)
        print(f"pushed {layer} {time.monotonic()}", flush=True)
        if cfg.get("hang_after_layer") == layer:
            stdin.read_line(120)  # killed here by the test
            os._exit(3)
    worker.wait_for_save()
    worker.clear_connector_metadata()

    # The requests finish (max_tokens=1); blocks stay until the sends are reported.
    params = {}
    for r in requests:
        delay, p = sched.request_finished(vreqs[r["id"]], blocks[r["id"]])
        assert delay is True and p["transfer_id"] == r["tid"], (delay, p)
        params[r["id"]] = p
    finished, pending = set(), set(vreqs)
    new_finished = set(vreqs)
    deadline = time.monotonic() + 60
    while pending and time.monotonic() < deadline:
        sending, _ = worker.get_finished(new_finished)
        new_finished = set()
        finished |= sending or set()
        pending -= sending or set()
        if pending:
            time.sleep(0.01)  # polling get_finished is what vLLM's step loop does
    result = {"pushed_last_at": pushed_last_at, "params": params, "unfinished": sorted(pending),
              "failed": worker.failed_sends()}
    worker.shutdown()
    print("done " + json.dumps(result), flush=True)


if __name__ == "__main__":
    run_prefill(json.loads(sys.argv[1]))
