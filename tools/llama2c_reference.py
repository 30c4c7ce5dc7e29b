#!/usr/bin/env python3
"""Independent numpy reference for llama2.c legacy (version 0) model files.

Reads any llama2.c legacy .bin (7 int32 header: dim, hidden_dim, n_layers,
n_heads, n_kv_heads, vocab_size (negative = separate classifier), seq_len;
then fp32 weights in run.c order) and its tokenizer.bin, and computes what
llama2.c's run.c computes, in float64 by default (float32 on request), over a
whole window at once (no KV cache): RMSNorm eps 1e-5, grouped-query attention
(query head h reads kv head h // (n_heads / n_kv_heads)), RoPE on interleaved
pairs (2i, 2i+1) with freq_i = 1/10000^(2i/head_dim) at position = token index,
causal softmax scaled by 1/sqrt(head_dim), SwiGLU FFN w2(silu(w1 x) * w3 x).
It shares no code with tools/train_tiny_lm.py on purpose.

Tokenizers:
  byte-level  vocab 256 and entry i is the single byte i (kvwire's own models):
              token id = byte value, no BOS.
  llama2.c    anything else: run.c's encode(): BOS (id 1), a " " dummy-prefix
              token, UTF-8 code points looked up whole, unknown ones as byte
              fallback ids byte+3, then greedy merges of the adjacent pair whose
              merged piece has the highest score (leftmost on ties).
  --no-bos drops the BOS token of a llama2.c tokenizer; --bos forces BOS=1 for
  any tokenizer.

Perplexity protocol (subcommand ppl): the text is tokenized once (or each
non-empty line separately with --per-line, each line getting its own BOS).
The token stream is cut into windows of W+1 tokens that overlap by one token
(window k = tokens[kW .. kW+W]); each window is run from an empty cache, its
first W tokens predict its last W, so every token but the first of the
stream is predicted exactly once. W defaults to the model's seq_len. A last,
shorter window is scored too unless --full-windows-only. PPL = exp(total
NLL / predicted tokens), natural log. This is exactly the evaluation of
train_tiny_lm.py when run with --full-windows-only on a byte-level model.

Subcommands (run `<subcommand> --help` for every option):
  info      print the header, tokenizer kind, parameter count
  encode    print the token ids of a text
  logits    write the logits [n_tokens, vocab] of one token sequence
            (<= seq_len tokens) as .npy, or raw little-endian float32 for any
            other extension; optional --tokens-out writes the ids as int32
  ppl       perplexity of a text file over windows (JSON on stdout)
  generate  greedy continuation of a prompt (sanity check)

Threads: numpy's BLAS follows OPENBLAS_NUM_THREADS / OMP_NUM_THREADS.

Examples:
  tools/llama2c_reference.py ppl models/kjv-gqa-6l/model.bin \\
      --tokenizer models/kjv-gqa-6l/tokenizer.bin --text-file models/data/kjv_eval.txt
  tools/llama2c_reference.py logits stories260K.bin --tokenizer tok512.bin \\
      --text "Once upon a time" --out logits.npy --tokens-out tokens.i32
"""

import argparse
import hashlib
import heapq
import json
import math
import os
import struct
import sys

import numpy as np

BOS_ID = 1


# --------------------------------------------------------------------------- files

class Config:
    def __init__(self, dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len):
        self.dim = dim
        self.hidden_dim = hidden_dim
        self.n_layers = n_layers
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads
        self.shared_classifier = vocab_size > 0
        self.vocab_size = abs(vocab_size)
        self.seq_len = seq_len
        self.head_dim = dim // n_heads
        self.kv_dim = self.head_dim * n_kv_heads

    def as_dict(self):
        return dict(dim=self.dim, hidden_dim=self.hidden_dim, n_layers=self.n_layers, n_heads=self.n_heads,
                    n_kv_heads=self.n_kv_heads, vocab_size=self.vocab_size, seq_len=self.seq_len,
                    head_dim=self.head_dim, shared_classifier=self.shared_classifier)


def load_model(path):
    """Returns (Config, dict of float32 arrays) read from a llama2.c legacy file."""
    raw = np.fromfile(path, dtype="<f4")
    header = struct.unpack("<7i", open(path, "rb").read(28))
    cfg = Config(*header)
    if cfg.dim <= 0 or cfg.n_heads <= 0 or cfg.n_kv_heads <= 0 or cfg.dim % cfg.n_heads \
            or cfg.n_heads % cfg.n_kv_heads or cfg.head_dim % 2:
        raise ValueError("implausible header %r" % (header,))
    d, h, L, v, kv = cfg.dim, cfg.hidden_dim, cfg.n_layers, cfg.vocab_size, cfg.kv_dim
    shapes = [
        ("token_embedding_table", (v, d)),
        ("rms_att_weight", (L, d)),
        ("wq", (L, d, d)),
        ("wk", (L, kv, d)),
        ("wv", (L, kv, d)),
        ("wo", (L, d, d)),
        ("rms_ffn_weight", (L, d)),
        ("w1", (L, h, d)),
        ("w2", (L, d, h)),
        ("w3", (L, h, d)),
        ("rms_final_weight", (d,)),
        ("freq_cis_real", (cfg.seq_len, cfg.head_dim // 2)),
        ("freq_cis_imag", (cfg.seq_len, cfg.head_dim // 2)),
    ]
    if not cfg.shared_classifier:
        shapes.append(("wcls", (v, d)))
    need = 7 + sum(int(np.prod(s)) for _, s in shapes)
    if raw.size != need:
        raise ValueError("%s: %d float32 words, header implies %d" % (path, raw.size, need))
    weights = {}
    off = 7
    for name, shape in shapes:
        n = int(np.prod(shape))
        weights[name] = raw[off:off + n].reshape(shape)
        off += n
    if cfg.shared_classifier:
        weights["wcls"] = weights["token_embedding_table"]
    return cfg, weights


class Tokenizer:
    def __init__(self, path, vocab_size):
        data = open(path, "rb").read()
        (self.max_token_length,) = struct.unpack_from("<i", data, 0)
        off = 4
        self.pieces = []
        self.scores = []
        for _ in range(vocab_size):
            score, n = struct.unpack_from("<fi", data, off)
            off += 8
            self.pieces.append(data[off:off + n])
            self.scores.append(score)
            off += n
        self.byte_level = vocab_size == 256 and all(p == bytes([i]) for i, p in enumerate(self.pieces))
        self.lookup = {}
        for i, p in enumerate(self.pieces):
            self.lookup.setdefault(p, i)

    @property
    def kind(self):
        return "byte-level" if self.byte_level else "llama2.c"

    def encode(self, text_bytes, bos=None):
        """Token ids of a byte string. bos None = the tokenizer kind's default."""
        if bos is None:
            bos = not self.byte_level
        ids = [BOS_ID] if bos else []
        if self.byte_level:
            return ids + list(text_bytes)
        return ids + self._bpe(text_bytes)

    def _bpe(self, text):
        ids = []
        if text:
            if b" " not in self.lookup:
                raise ValueError("llama2.c tokenizer without a ' ' piece for the dummy prefix")
            ids.append(self.lookup[b" "])
        # code points (a lead byte and at most 3 continuation bytes), as run.c groups them
        i = 0
        while i < len(text):
            j = i + 1
            while j < len(text) and (text[j] & 0xC0) == 0x80 and j - i < 4:
                j += 1
            cp = text[i:j]
            tid = self.lookup.get(cp)
            if tid is not None:
                ids.append(tid)
            else:
                ids.extend(b + 3 for b in cp)
            i = j
        return self._merge(ids)

    def _merge(self, ids):
        """run.c's loop (merge the best-scoring pair, leftmost on ties, until
        none is in the vocabulary) done with a heap over a linked list."""
        n = len(ids)
        if n < 2:
            return ids
        tok = list(ids)
        nxt = list(range(1, n)) + [-1]
        prv = [-1] + list(range(n - 1))
        ver = [0] * n
        alive = [True] * n
        heap = []

        def push(a):
            b = nxt[a]
            if b < 0:
                return
            mid = self.lookup.get(self.pieces[tok[a]] + self.pieces[tok[b]])
            if mid is not None and self.scores[mid] > -1e10:
                heapq.heappush(heap, (-self.scores[mid], a, ver[a], b, ver[b], mid))

        for a in range(n - 1):
            push(a)
        while heap:
            _, a, va, b, vb, mid = heapq.heappop(heap)
            if not (alive[a] and alive[b] and ver[a] == va and ver[b] == vb and nxt[a] == b):
                continue
            tok[a] = mid
            ver[a] += 1
            alive[b] = False
            nb = nxt[b]
            nxt[a] = nb
            if nb >= 0:
                prv[nb] = a
            if prv[a] >= 0:
                push(prv[a])
            push(a)
        out = []
        a = 0
        while a >= 0:
            out.append(tok[a])
            a = nxt[a]
        return out

    def decode(self, ids):
        out = b""
        for t in ids:
            p = self.pieces[t]
            if not self.byte_level and len(p) == 6 and p.startswith(b"<0x") and p.endswith(b">"):
                try:
                    p = bytes([int(p[3:5], 16)])
                except ValueError:
                    pass
            out += p
        return out


# --------------------------------------------------------------------------- forward

class Reference:
    def __init__(self, cfg, weights, dtype=np.float64, rope_source="compute"):
        self.cfg = cfg
        self.dtype = dtype
        self.w = {k: v.astype(dtype) for k, v in weights.items()}
        hs = cfg.head_dim
        if rope_source == "file":
            self.cos = weights["freq_cis_real"].astype(dtype)
            self.sin = weights["freq_cis_imag"].astype(dtype)
        else:
            # run.c: freq = 1.0f / powf(10000.0f, head_dim / (float)head_size); val = pos * freq;
            # the angle is formed in float32 exactly like that, its cos/sin taken in `dtype`.
            i2 = np.arange(0, hs, 2, dtype=np.float32)
            freq = np.float32(1.0) / np.power(np.float32(10000.0), i2 / np.float32(hs))
            pos = np.arange(cfg.seq_len, dtype=np.float32)
            ang = (pos[:, None] * freq[None, :]).astype(np.float32)
            self.cos = np.cos(ang.astype(dtype))
            self.sin = np.sin(ang.astype(dtype))

    def _rms(self, x, g):
        ss = (x * x).mean(axis=-1, keepdims=True) + self.dtype(1e-5)
        return g * (x / np.sqrt(ss))

    def _rope(self, x, n_heads):
        t = x.shape[0]
        xr = x.reshape(t, n_heads, -1, 2)
        c = self.cos[:t][:, None, :]
        s = self.sin[:t][:, None, :]
        a, b = xr[..., 0], xr[..., 1]
        return np.stack((a * c - b * s, a * s + b * c), axis=-1).reshape(t, -1)

    def forward(self, tokens):
        """Logits [len(tokens), vocab] of a sequence starting at position 0."""
        cfg, w = self.cfg, self.w
        t = len(tokens)
        if t == 0 or t > cfg.seq_len:
            raise ValueError("sequence of %d tokens; model seq_len is %d" % (t, cfg.seq_len))
        toks = np.asarray(tokens, dtype=np.int64)
        if toks.min() < 0 or toks.max() >= cfg.vocab_size:
            raise ValueError("token id out of range")
        hs, nh, nkv = cfg.head_dim, cfg.n_heads, cfg.n_kv_heads
        group = nh // nkv
        scale = self.dtype(1.0 / math.sqrt(hs))
        causal = np.triu(np.ones((t, t), dtype=bool), k=1)
        x = w["token_embedding_table"][toks].copy()
        for l in range(cfg.n_layers):
            xb = self._rms(x, w["rms_att_weight"][l])
            q = self._rope(xb @ w["wq"][l].T, nh).reshape(t, nh, hs)
            k = self._rope(xb @ w["wk"][l].T, nkv).reshape(t, nkv, hs)
            v = (xb @ w["wv"][l].T).reshape(t, nkv, hs)
            heads = np.empty((t, nh, hs), dtype=self.dtype)
            for h in range(nh):
                kh = h // group
                s = (q[:, h, :] @ k[:, kh, :].T) * scale
                s[causal] = -np.inf
                s = s - s.max(axis=-1, keepdims=True)
                p = np.exp(s)
                p /= p.sum(axis=-1, keepdims=True)
                heads[:, h, :] = p @ v[:, kh, :]
            x = x + heads.reshape(t, nh * hs) @ w["wo"][l].T
            xb = self._rms(x, w["rms_ffn_weight"][l])
            h1 = xb @ w["w1"][l].T
            h3 = xb @ w["w3"][l].T
            x = x + ((h1 / (1.0 + np.exp(-h1))) * h3) @ w["w2"][l].T
        x = self._rms(x, w["rms_final_weight"])
        return x @ w["wcls"].T


def log_softmax(z):
    m = z.max(axis=-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))


def perplexity(ref, streams, window, full_only, max_windows):
    total, count, windows = 0.0, 0, 0
    for ids in streams:
        start = 0
        while start + 1 < len(ids):
            if max_windows and windows >= max_windows:
                break
            chunk = ids[start:start + window + 1]
            if full_only and len(chunk) < window + 1:
                break
            lp = log_softmax(ref.forward(chunk[:-1]).astype(np.float64))
            tgt = np.asarray(chunk[1:])
            total -= float(lp[np.arange(len(tgt)), tgt].sum())
            count += len(tgt)
            windows += 1
            start += window
    return total, count, windows


# --------------------------------------------------------------------------- CLI

def read_text_arg(args):
    if getattr(args, "text", None) is not None:
        data = args.text.encode("utf-8")
    elif getattr(args, "text_file", None):
        data = open(args.text_file, "rb").read()
    else:
        return None
    if args.newlines == "lf":
        data = data.replace(b"\r\n", b"\n")
    return data


def bos_choice(args):
    return True if args.bos else (False if args.no_bos else None)


def read_tokens_file(path):
    if path.endswith(".npy"):
        return [int(t) for t in np.load(path).reshape(-1)]
    if path.endswith(".i32") or path.endswith(".bin"):
        return [int(t) for t in np.fromfile(path, dtype="<i4")]
    return [int(t) for t in open(path).read().replace(",", " ").split()]


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def add_common(p, text=True):
    p.add_argument("model", help="llama2.c legacy .bin")
    p.add_argument("--tokenizer", help="llama2.c tokenizer.bin (default: tokenizer.bin next to the model)")
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                   help="arithmetic precision of the reference (default float64)")
    p.add_argument("--rope", choices=("compute", "file"), default="compute",
                   help="compute cos/sin as run.c does (default) or use the file's freq_cis tables")
    if text:
        p.add_argument("--text", help="input text (UTF-8)")
        p.add_argument("--text-file", help="input text file (raw bytes)")
        p.add_argument("--newlines", choices=("keep", "lf"), default="keep",
                       help="keep the bytes as they are (default) or turn CRLF into LF first")
        p.add_argument("--bos", action="store_true", help="prepend BOS (id 1) whatever the tokenizer")
        p.add_argument("--no-bos", action="store_true", help="never prepend BOS")


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("info", help="header, tokenizer kind, parameter count")
    add_common(s, text=False)

    s = sub.add_parser("encode", help="print token ids of a text")
    add_common(s)
    s.add_argument("--out", help="also write the ids as raw little-endian int32")

    s = sub.add_parser("logits", help="logits of one token sequence")
    add_common(s)
    s.add_argument("--tokens", help="comma/space-separated token ids instead of a text")
    s.add_argument("--tokens-file", help="token ids: .npy, raw int32 (.i32/.bin) or text")
    s.add_argument("--max-tokens", type=int, default=0, help="truncate the sequence to this many tokens")
    s.add_argument("--out", required=True,
                   help="output: .npy (float32 [n_tokens, vocab]) or raw little-endian float32 otherwise")
    s.add_argument("--out-dtype", choices=("float32", "float64"), default="float32",
                   help="element type written (default float32)")
    s.add_argument("--tokens-out", help="write the token ids used as raw little-endian int32")

    s = sub.add_parser("ppl", help="perplexity of a text file over windows (JSON on stdout)")
    add_common(s)
    s.add_argument("--window", type=int, default=0, help="W, predictions per window (default: seq_len)")
    s.add_argument("--per-line", action="store_true",
                   help="tokenize each non-empty line as its own document (own BOS, own windows)")
    s.add_argument("--full-windows-only", action="store_true", help="skip a last window shorter than W+1")
    s.add_argument("--max-windows", type=int, default=0, help="stop after this many windows (0 = all)")

    s = sub.add_parser("generate", help="greedy continuation of a prompt")
    add_common(s)
    s.add_argument("--steps", type=int, default=64, help="tokens to generate (default 64)")
    return p


def main():
    args = build_parser().parse_args()
    cfg, weights = load_model(args.model)
    tok_path = args.tokenizer or os.path.join(os.path.dirname(os.path.abspath(args.model)), "tokenizer.bin")
    tok = Tokenizer(tok_path, cfg.vocab_size)
    ref = Reference(cfg, weights, np.float64 if args.dtype == "float64" else np.float32, args.rope)

    if args.cmd == "info":
        n = sum(v.size for k, v in weights.items() if not k.startswith("freq_cis")
                and not (k == "wcls" and cfg.shared_classifier))
        print(json.dumps(dict(cfg.as_dict(), params=int(n), tokenizer=tok.kind,
                              max_token_length=tok.max_token_length, sha256=sha256_file(args.model)), indent=1))
        return

    text = read_text_arg(args)
    if args.cmd == "encode":
        if text is None:
            sys.exit("encode needs --text or --text-file")
        ids = tok.encode(text, bos_choice(args))
        print(" ".join(map(str, ids)))
        if args.out:
            np.asarray(ids, dtype="<i4").tofile(args.out)
        return

    if args.cmd == "logits":
        if args.tokens is not None:
            ids = [int(t) for t in args.tokens.replace(",", " ").split()]
        elif args.tokens_file:
            ids = read_tokens_file(args.tokens_file)
        elif text is not None:
            ids = tok.encode(text, bos_choice(args))
        else:
            sys.exit("logits needs --tokens, --tokens-file, --text or --text-file")
        if args.max_tokens:
            ids = ids[:args.max_tokens]
        logits = ref.forward(ids).astype(args.out_dtype)
        if args.out.endswith(".npy"):
            np.save(args.out, logits)
        else:
            logits.astype("<f4" if args.out_dtype == "float32" else "<f8").tofile(args.out)
        if args.tokens_out:
            np.asarray(ids, dtype="<i4").tofile(args.tokens_out)
        print(json.dumps({"tokens": len(ids), "vocab": cfg.vocab_size, "out": args.out,
                          "argmax_last": int(logits[-1].argmax())}))
        return

    if args.cmd == "ppl":
        if text is None:
            sys.exit("ppl needs --text or --text-file")
        window = args.window or cfg.seq_len
        if window > cfg.seq_len:
            sys.exit("window %d exceeds seq_len %d" % (window, cfg.seq_len))
        if args.per_line:
            streams = [tok.encode(line, bos_choice(args)) for line in text.split(b"\n") if line.strip()]
        else:
            streams = [tok.encode(text, bos_choice(args))]
        total, count, nwin = perplexity(ref, streams, window, args.full_windows_only, args.max_windows)
        print(json.dumps({
            "model": args.model, "tokenizer": tok.kind, "text": args.text_file or "<--text>",
            "text_bytes": len(text), "documents": len(streams), "tokens": sum(len(s) for s in streams),
            "window": window, "windows": nwin, "predicted": count, "nll_sum": total,
            "mean_nll": total / max(count, 1), "ppl": math.exp(total / max(count, 1)),
            "bits_per_token": total / max(count, 1) / math.log(2), "dtype": args.dtype,
            "bos": bos_choice(args), "newlines": args.newlines, "per_line": args.per_line,
            "full_windows_only": args.full_windows_only}, indent=1))
        return

    if args.cmd == "generate":
        ids = tok.encode(text if text is not None else b"", bos_choice(args))
        start = len(ids)
        for _ in range(args.steps):
            if len(ids) >= cfg.seq_len:
                break
            ids.append(int(ref.forward(ids)[-1].argmax()))
        sys.stdout.write(tok.decode(ids[:start]).decode("utf-8", "replace") + "|" +
                         tok.decode(ids[start:]).decode("utf-8", "replace") + "\n")
        return


if __name__ == "__main__":
    main()
