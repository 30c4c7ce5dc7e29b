#!/usr/bin/python3
"""Concatenate KV dumps of consecutive text windows into one long KV dump along tokens.

  concat_kv_windows.py OUT.safetensors W0.safetensors W1.safetensors ...

The project's model has a 512-token context, so a KV cache of ~200 MB (bench/handoff_tbf.sh)
is assembled from windows captured by `kvwire capture --offset i*512 --tokens 512`, each
prefilled at positions 0..511. Concatenated as they are, window w's keys would carry RoPE
angles of positions 0..511 while the dump (positions_start 0) says 512w..512w+511, and codecs
that undo RoPE (fraqtl's pre-RoPE keys) would see wrongly rotated keys. So each window's keys
are rotated on by 512w positions (RoPE rotations compose: R(p + d) = R(d) R(p)); values are
copied. The result is what the model's keys would be at those positions, not a real 64k-token
prefill (attention never spans windows).

Inputs must be F32 or F16 dumps of one model (same metadata, layers, heads, head_dim);
interleaved or neox RoPE from the metadata. Output dtype: F16. Needs numpy (Debian
python3-numpy; run with /usr/bin/python3).
"""
import json
import struct
import sys

import numpy as np

DTYPES = {"F32": np.float32, "F16": np.float16}


def read(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    meta = header.pop("__metadata__", {})
    tensors = {}
    for name, t in header.items():
        a, b = t["data_offsets"]
        tensors[name] = np.frombuffer(data[a:b], dtype=DTYPES[t["dtype"]]).reshape(t["shape"])
    return meta, tensors


def rotate(k, delta, theta, head_dim, style):
    """Applies RoPE by `delta` positions to keys k [tokens, heads, head_dim] (float32)."""
    half = head_dim // 2
    inv_freq = 1.0 / np.power(np.float32(theta), np.arange(half, dtype=np.float32) * 2 / head_dim)
    ang = np.float64(delta) * inv_freq.astype(np.float64)
    c, s = np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)
    if style == "neox":
        x0, x1 = k[..., :half], k[..., half:]
    else:  # interleaved: pairs (2i, 2i+1)
        x0, x1 = k[..., 0::2], k[..., 1::2]
    y0 = x0 * c - x1 * s
    y1 = x0 * s + x1 * c
    out = np.empty_like(k)
    if style == "neox":
        out[..., :half], out[..., half:] = y0, y1
    else:
        out[..., 0::2], out[..., 1::2] = y0, y1
    return out


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    out_path, inputs = sys.argv[1], sys.argv[2:]
    meta0, t0 = read(inputs[0])
    if meta0.get("positions_start", "0") != "0":
        sys.exit("concat_kv_windows: the first window must start at position 0")
    theta = float(meta0.get("rope_theta", "10000"))
    style = meta0.get("rope_style", "interleaved")
    names = sorted(n for n in t0 if n[0] in "kv")
    parts = {n: [] for n in names}
    pos = 0
    for path in inputs:
        meta, t = read(path)
        if meta.get("model_fingerprint") != meta0.get("model_fingerprint") or sorted(t) != sorted(t0):
            sys.exit(f"concat_kv_windows: {path} is not from the same model/shape as {inputs[0]}")
        tokens = t[names[0]].shape[0]
        for n in names:
            x = t[n].astype(np.float32)
            if n.startswith("k.") and pos:
                x = rotate(x, pos, theta, x.shape[-1], style)
            parts[n].append(x.astype(np.float16))
        pos += tokens
    header, blobs, off = {}, [], 0
    for n in names:
        a = np.ascontiguousarray(np.concatenate(parts[n], axis=0))
        header[n] = {"dtype": "F16", "shape": list(a.shape), "data_offsets": [off, off + a.nbytes]}
        blobs.append(a.tobytes())
        off += a.nbytes
    meta0 = dict(meta0)
    meta0["positions_start"] = "0"
    header["__metadata__"] = meta0
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(out_path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    print(f"wrote {out_path}: {len(inputs)} windows, {pos} tokens, {off} bytes of F16 KV")


if __name__ == "__main__":
    main()
