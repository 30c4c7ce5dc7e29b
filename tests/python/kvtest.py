"""Shared helpers of the Python tests: KV dumps (safetensors) and the CLI."""

import json
import os
import struct
import subprocess

import numpy

CLI = os.environ.get("KVWIRE_CLI", "kvwire")
PYTHON = os.environ.get("KVWIRE_PYTHON", "/usr/bin/python3")

_DTYPES = {"F16": numpy.float16, "F32": numpy.float32}


def run_cli(*args, timeout=240):
    """Runs the kvwire CLI; fails the test with its stderr when it fails."""
    r = subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise AssertionError(f"kvwire {' '.join(map(str, args))}: {r.stderr.strip()}")
    return r.stdout


def calibrated_profile(directory, layers, kv_heads, head_dim, seed=5):
    """A fraqtl profile for KV of that shape, as `kvwire calibrate` makes one from a synthetic
    dump (`kvwire synth`, 256 tokens, 4 query heads); returns its path in `directory`."""
    dump = os.path.join(directory, "calibration.safetensors")
    profile = os.path.join(directory, "p.kvp")
    run_cli("synth", "--out", dump, "--layers", layers, "--kv-heads", kv_heads, "--head-dim",
            head_dim, "--tokens", 256, "--q-heads", 4, "--seed", seed)
    run_cli("calibrate", "--dumps", dump, "--out", profile)
    return profile


def load_dump(path):
    """A KV dump as ((layers, 2, tokens, kv_heads, head_dim) array, metadata dict)."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    meta = header.pop("__metadata__", {})
    layers = sum(1 for k in header if k.startswith("k."))
    out = None
    for layer in range(layers):
        for kind, name in enumerate(("k", "v")):
            t = header[f"{name}.{layer}"]
            begin, end = t["data_offsets"]
            a = numpy.frombuffer(body[begin:end], dtype=_DTYPES[t["dtype"]]).reshape(t["shape"])
            if out is None:
                out = numpy.empty((layers, 2, *t["shape"]), dtype=a.dtype)
            out[layer, kind] = a
    return out, meta


def metadata_kwargs(meta):
    """encode() keyword arguments for a dump's metadata (what `kvwire encode` copies)."""
    return {
        "positions_start": int(meta.get("positions_start", "0")),
        "rope_theta": float(meta.get("rope_theta", "10000")),
        "rope_style": meta.get("rope_style", "none"),
        "model_fingerprint": meta.get("model_fingerprint", ""),
    }


def same_bits(a, b):
    """True when two arrays hold the same bytes (so -0.0 != 0.0 and NaN == NaN)."""
    a, b = numpy.ascontiguousarray(a), numpy.ascontiguousarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()
