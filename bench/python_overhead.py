#!/usr/bin/env python3
"""What the Python module adds to a transfer: the same paged fp16 KV transfer through the C++
session API (build/bench/transfer_timing) and through kvwire.Sender / Receiver, in one run.

Both: sender and receiver in one process on 127.0.0.1, a vLLM-layout paged cache (per layer
(2, num_blocks, block_size, kv_heads, head_dim), block ids reversed), fp16 level, layer-by-layer
pushes; the time of a transfer runs from open to both ends done. C++ and Python runs alternate
(--rounds), each run's first transfer is a warm-up and is dropped; the medians are compared.

Usage (from the repository root, after building transfer_timing and the Python module):
  PYTHONPATH=build/python /usr/bin/python3 bench/python_overhead.py [--backend tcp]
Writes bench/results/python_overhead.{md,json}."""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import time

import torch

import kvwire

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python_run(backend, layers, tokens, heads, dim, block, repeat):
    blocks = (tokens + block - 1) // block
    ids = list(range(blocks - 1, -1, -1))
    src = [torch.randn(2, blocks, block, heads, dim).half() for _ in range(layers)]
    dst = [torch.zeros(2, blocks, block, heads, dim, dtype=torch.float16) for _ in range(layers)]
    key = bytes([7]) * 32
    seconds = []
    with kvwire.Receiver.listen("127.0.0.1:0", backend=backend, key=key) as rx, \
            kvwire.Sender.connect(rx.address, backend=backend, key=key) as tx:
        for i in range(repeat):
            start = time.perf_counter()
            req = tx.open(src, request_id=i + 1, codec="fp16", block_ids=ids, tokens=tokens)
            rx.next_request(timeout_ms=30000)
            rx.set_destination(i + 1, dst, block_ids=ids, tokens=tokens)
            for layer in range(layers):
                req.push_layer(layer)
            rx.wait(i + 1, timeout_ms=60000)
            req.wait(timeout_ms=60000)
            seconds.append(time.perf_counter() - start)
            rx.release(i + 1)
    if not all(torch.equal(s.view(torch.int16), d.view(torch.int16)) for s, d in zip(src, dst)):
        raise SystemExit("python_overhead: the Python transfer arrived different")
    return seconds


def cpp_run(binary, backend, layers, tokens, heads, dim, block, repeat):
    out = subprocess.run([binary, backend, *map(str, (layers, tokens, heads, dim, block, repeat))],
                         capture_output=True, text=True, timeout=600, check=True)
    return json.loads(out.stdout)["seconds"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", default="tcp")
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--block", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=6, help="transfers per run (first dropped)")
    ap.add_argument("--rounds", type=int, default=3, help="C++ / Python run pairs")
    ap.add_argument("--binary", default=os.path.join(ROOT, "build/bench/transfer_timing"))
    ap.add_argument("--out-dir", default=os.path.join(ROOT, "bench/results"))
    ap.add_argument("--note", default="", help="a sentence for the report (e.g. the load)")
    a = ap.parse_args()
    shape = (a.layers, a.tokens, a.kv_heads, a.head_dim, a.block, a.repeat)
    cpp, py = [], []
    for _ in range(a.rounds):
        cpp += cpp_run(a.binary, a.backend, *shape)[1:]
        py += python_run(a.backend, *shape)[1:]
    c, p = statistics.median(cpp), statistics.median(py)
    gib = a.layers * 2 * a.tokens * a.kv_heads * a.head_dim * 2 / 2**30
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.node()}, {os.cpu_count()} cores, {platform.machine()}",
        "commit": commit, "backend": a.backend,
        "shape": {"layers": a.layers, "tokens": a.tokens, "kv_heads": a.kv_heads,
                  "head_dim": a.head_dim, "block_size": a.block},
        "gib": gib, "cpp_seconds": cpp, "python_seconds": py, "cpp_median": c,
        "python_median": p, "ratio": p / c}
    rows = [("C++ (transfer_timing)", c, min(cpp)), ("Python (kvwire)", p, min(py))]
    table = ["| API | median s | min s | GiB/s (median) |", "|---|---:|---:|---:|"]
    table += [f"| {n} | {m:.4f} | {lo:.4f} | {gib / m:.2f} |" for n, m, lo in rows]
    print("\n".join(table))
    print(f"Python / C++ = {p / c:.3f} ({(p / c - 1) * 100:+.1f} %)")
    os.makedirs(a.out_dir, exist_ok=True)
    with open(os.path.join(a.out_dir, "python_overhead.json"), "w") as f:
        json.dump(result, f, indent=1)
    cmd = "PYTHONPATH=build/python /usr/bin/python3 bench/python_overhead.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in
        (("backend", a.backend), ("layers", a.layers), ("tokens", a.tokens),
         ("kv_heads", a.kv_heads), ("head_dim", a.head_dim), ("block", a.block),
         ("repeat", a.repeat), ("rounds", a.rounds)))
    with open(os.path.join(a.out_dir, "python_overhead.md"), "w") as f:
        f.write(f"""# Python overhead of a KV transfer

The same paged fp16 transfer ({a.layers} layers x {a.tokens} tokens x {a.kv_heads} kv heads x
{a.head_dim}, block size {a.block}: {gib:.3f} GiB, {a.backend} on 127.0.0.1, sender and receiver
in one process) through the C++ session API and through the Python module; {a.rounds} runs of
each, alternating, {a.repeat - 1} timed transfers per run (the first is a warm-up).

- Command: `{cmd}`
- Date: {result['date']}; machine: {result['machine']}; commit: {commit}

{chr(10).join(table)}

Python / C++ = {p / c:.3f} ({(p / c - 1) * 100:+.1f} %).
{chr(10) + a.note + chr(10) if a.note else ""}""")


if __name__ == "__main__":
    main()
