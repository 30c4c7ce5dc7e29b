#!/usr/bin/env python3
"""Train kvwire's own small LLaMA-architecture byte-level language model on CPU.

The model computes exactly what llama2.c's run.c computes (RMSNorm eps 1e-5,
grouped-query attention, interleaved-pair RoPE, SwiGLU FFN, no biases), and is
exported in llama2.c's legacy (version 0) .bin format together with a 256-entry
byte-level tokenizer.bin, so the project's C++ runner and
tools/llama2c_reference.py can load it.

Data: the King James Bible as printed by the `bible` program of the Debian
package bible-kjv (`bible -m 8192 "gen1:1-rev22:21"`), verse numbers and
chapter headings removed, one verse per line, a blank line between chapters.
Chapters are split deterministically by interleaving: of every 20 consecutive
chapters (in canonical order), the one at position 9 goes to the calibration
split, the one at position 19 to the evaluation split, the other 18 to
training (90% / 5% / 5% of chapters). The held-out splits are written (capped
at --split-cap-bytes, cut at a chapter boundary) to --data-dir as
kjv_calib.txt and kjv_eval.txt; no held-out chapter is ever trained on, even
the ones past the cap. Optionally (--fortunes) the '%'-separated fortune files
of the Debian package fortunes are appended to the training split only.

Tokenizer: bytes. Token id == byte value, vocab 256, no BOS/EOS token.

Outputs in --out-dir: model.bin, tokenizer.bin, train_log.txt,
train_summary.json, SHA256SUMS (of model.bin and tokenizer.bin).
Run with /usr/bin/python3 (Debian's python3-torch, python3-numpy).
"""

import argparse
import hashlib
import json
import math
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

BIBLE_CMD = ["bible", "-m", "8192", "gen1:1-rev22:21"]
FORTUNE_DIR = "/usr/share/games/fortunes"
SPLIT_PERIOD = 20
CALIB_SLOT = 9
EVAL_SLOT = 19


# --------------------------------------------------------------------------- data

def parse_bible_output(raw):
    """Turn `bible` output into a list of (heading, chapter_text).

    The program prints, per chapter: an empty line, a heading "Book N", an
    empty line, then verses as "  <n> <text>" wrapped at the terminal width
    with continuation lines starting at column 0. Continuation lines are joined
    back with a single space; the verse number is dropped.
    """
    chapters = []
    heading = None
    verses = []
    expect_heading = False
    for line in raw.splitlines():
        if line.strip() == "":
            expect_heading = True
            continue
        if expect_heading and not line.startswith(" "):
            if heading is not None and verses:
                chapters.append((heading, verses))
            elif heading is not None:
                raise ValueError("chapter without verses: %r" % heading)
            heading = line.strip()
            verses = []
            expect_heading = False
            continue
        expect_heading = False
        if line.startswith("  "):
            num, _, text = line.strip().partition(" ")
            if not num.isdigit():
                raise ValueError("unexpected verse line: %r" % line)
            verses.append(text.strip())
        else:
            if not verses:
                raise ValueError("continuation before any verse: %r" % line)
            verses[-1] = verses[-1] + " " + line.strip()
    if heading is not None and verses:
        chapters.append((heading, verses))
    return [(h, "\n".join(v) + "\n") for h, v in chapters]


def load_kjv(text_file):
    if text_file:
        with open(text_file, "r", encoding="utf-8") as f:
            raw = f.read()
    else:
        raw = subprocess.run(BIBLE_CMD, check=True, stdout=subprocess.PIPE).stdout.decode("utf-8")
    chapters = parse_bible_output(raw)
    if len(chapters) != 1189:
        print("warning: expected 1189 chapters, parsed %d" % len(chapters), file=sys.stderr)
    return chapters


def load_fortunes(directory):
    """All '%'-separated fortune files of a directory (sorted names, no .dat/.u8)."""
    out = []
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if name.endswith(".dat") or name.endswith(".u8") or not os.path.isfile(path):
            continue
        if os.path.islink(path):
            continue
        with open(path, "rb") as f:
            data = f.read()
        for item in data.replace(b"\r\n", b"\n").split(b"\n%\n"):
            item = item.strip(b"%\n")
            if item:
                out.append(item + b"\n")
    return out


def split_chapters(chapters):
    train, calib, evl = [], [], []
    for i, (_, text) in enumerate(chapters):
        slot = i % SPLIT_PERIOD
        if slot == CALIB_SLOT:
            calib.append(text)
        elif slot == EVAL_SLOT:
            evl.append(text)
        else:
            train.append(text)
    return train, calib, evl


def join_capped(texts, cap):
    """Chapters joined by a blank line, stopping before the one that would pass cap bytes."""
    out = []
    size = 0
    for t in texts:
        add = len(t.encode("utf-8")) + (1 if out else 0)
        if cap and size + add > cap:
            break
        out.append(t)
        size += add
    return "\n".join(out), len(out)


def unigram_stats(train_bytes, eval_bytes):
    """Entropy (nats) of the eval split's own byte distribution, and the
    cross-entropy of an add-one-smoothed train-split unigram model on it."""
    ev = np.bincount(np.frombuffer(eval_bytes, dtype=np.uint8), minlength=256).astype(np.float64)
    p = ev / ev.sum()
    nz = p > 0
    entropy = float(-(p[nz] * np.log(p[nz])).sum())
    tr = np.bincount(np.frombuffer(train_bytes, dtype=np.uint8), minlength=256).astype(np.float64) + 1.0
    q = tr / tr.sum()
    cross = float(-(p[nz] * np.log(q[nz])).sum())
    return entropy, cross


# --------------------------------------------------------------------------- model

class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_tables(head_dim, seq_len):
    """cos/sin [seq_len, head_dim/2], computed in float32 the way run.c does:
    freq_i = 1 / 10000^(2i/head_dim), angle = pos * freq_i."""
    i2 = torch.arange(0, head_dim, 2, dtype=torch.float32)
    freq = 1.0 / torch.pow(torch.tensor(10000.0, dtype=torch.float32), i2 / float(head_dim))
    pos = torch.arange(seq_len, dtype=torch.float32)
    ang = pos[:, None] * freq[None, :]
    return torch.cos(ang), torch.sin(ang)


def apply_rope(x, cos, sin):
    """x [B, T, H, hd]; rotates the interleaved pairs (2i, 2i+1)."""
    b, t, h, d = x.shape
    xp = x.reshape(b, t, h, d // 2, 2)
    x0 = xp[..., 0]
    x1 = xp[..., 1]
    c = cos[:t][None, :, None, :]
    s = sin[:t][None, :, None, :]
    return torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1).reshape(b, t, h, d)


class Attention(nn.Module):
    def __init__(self, dim, n_heads, n_kv_heads):
        super().__init__()
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads
        self.head_dim = dim // n_heads
        self.wq = nn.Linear(dim, n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(dim, n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(dim, n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(n_heads * self.head_dim, dim, bias=False)

    def forward(self, x, cos, sin, mask):
        b, t, _ = x.shape
        q = self.wq(x).view(b, t, self.n_heads, self.head_dim)
        k = self.wk(x).view(b, t, self.n_kv_heads, self.head_dim)
        v = self.wv(x).view(b, t, self.n_kv_heads, self.head_dim)
        q = apply_rope(q, cos, sin)
        k = apply_rope(k, cos, sin)
        group = self.n_heads // self.n_kv_heads
        if group > 1:  # query head h reads kv head h // group, as in run.c
            k = k.repeat_interleave(group, dim=2)
            v = v.repeat_interleave(group, dim=2)
        q, k, v = (z.transpose(1, 2) for z in (q, k, v))  # [B, H, T, hd]
        att = torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))
        att = att.masked_fill(mask[:t, :t], float("-inf"))
        att = torch.softmax(att, dim=-1)
        y = torch.matmul(att, v).transpose(1, 2).reshape(b, t, -1)
        return self.wo(y)


class FeedForward(nn.Module):
    def __init__(self, dim, hidden_dim):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.attention_norm = RMSNorm(cfg["dim"])
        self.attention = Attention(cfg["dim"], cfg["n_heads"], cfg["n_kv_heads"])
        self.ffn_norm = RMSNorm(cfg["dim"])
        self.feed_forward = FeedForward(cfg["dim"], cfg["hidden_dim"])

    def forward(self, x, cos, sin, mask):
        x = x + self.attention(self.attention_norm(x), cos, sin, mask)
        return x + self.feed_forward(self.ffn_norm(x))


class TinyLlama(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = dict(cfg)
        self.tok_embeddings = nn.Embedding(cfg["vocab_size"], cfg["dim"])
        self.layers = nn.ModuleList([Block(cfg) for _ in range(cfg["n_layers"])])
        self.norm = RMSNorm(cfg["dim"])
        self.output = nn.Linear(cfg["dim"], cfg["vocab_size"], bias=False)
        if cfg["shared_classifier"]:
            self.output.weight = self.tok_embeddings.weight
        cos, sin = rope_tables(cfg["dim"] // cfg["n_heads"], cfg["seq_len"])
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        mask = torch.triu(torch.ones(cfg["seq_len"], cfg["seq_len"], dtype=torch.bool), diagonal=1)
        self.register_buffer("causal_mask", mask, persistent=False)
        self._init_weights()

    def _init_weights(self):
        std = 0.02
        resid_std = std / math.sqrt(2 * self.cfg["n_layers"])
        for name, p in self.named_parameters():
            if p.dim() < 2:
                continue
            if name.endswith("wo.weight") or name.endswith("w2.weight"):
                nn.init.normal_(p, 0.0, resid_std)
            else:
                nn.init.normal_(p, 0.0, std)

    def forward(self, tokens):
        x = self.tok_embeddings(tokens)
        for layer in self.layers:
            x = layer(x, self.rope_cos, self.rope_sin, self.causal_mask)
        return self.output(self.norm(x))


def count_params(model):
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- export

def export_llama2c(model, path):
    """llama2.c legacy (version 0) file: 7 int32 header, fp32 weights in run.c order."""
    cfg = model.cfg
    vocab = cfg["vocab_size"] if cfg["shared_classifier"] else -cfg["vocab_size"]
    head = struct.pack("7i", cfg["dim"], cfg["hidden_dim"], cfg["n_layers"], cfg["n_heads"],
                       cfg["n_kv_heads"], vocab, cfg["seq_len"])
    layers = model.layers
    tensors = [model.tok_embeddings.weight]
    tensors += [l.attention_norm.weight for l in layers]
    tensors += [l.attention.wq.weight for l in layers]
    tensors += [l.attention.wk.weight for l in layers]
    tensors += [l.attention.wv.weight for l in layers]
    tensors += [l.attention.wo.weight for l in layers]
    tensors += [l.ffn_norm.weight for l in layers]
    tensors += [l.feed_forward.w1.weight for l in layers]
    tensors += [l.feed_forward.w2.weight for l in layers]
    tensors += [l.feed_forward.w3.weight for l in layers]
    tensors += [model.norm.weight, model.rope_cos, model.rope_sin]
    if not cfg["shared_classifier"]:
        tensors.append(model.output.weight)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(head)
        for t in tensors:
            f.write(t.detach().to(torch.float32).contiguous().numpy().astype("<f4").tobytes())
    os.replace(tmp, path)


def export_byte_tokenizer(path):
    """llama2.c tokenizer.bin: int32 max_token_length, then per token float32
    score, int32 length, bytes. Entry i is the single byte i, score 0."""
    with open(path, "wb") as f:
        f.write(struct.pack("<i", 1))
        for i in range(256):
            f.write(struct.pack("<fi", 0.0, 1))
            f.write(bytes([i]))


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- training

def eval_windows(data, seq_len, max_windows):
    """Start offsets of non-overlapping (seq_len + 1)-token windows; if more
    than max_windows exist, an evenly spaced deterministic subset."""
    n = (len(data) - 1) // seq_len
    starts = [i * seq_len for i in range(n)]
    if max_windows and n > max_windows:
        starts = [starts[(i * n) // max_windows] for i in range(max_windows)]
    return starts


@torch.no_grad()
def evaluate(model, data, starts, seq_len, batch):
    """Mean next-token NLL (nats/byte) over all predictions of the windows."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(starts), batch):
        chunk = starts[i:i + batch]
        w = torch.stack([data[s:s + seq_len + 1] for s in chunk]).long()
        logits = model(w[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), w[:, 1:].reshape(-1),
                               reduction="sum")
        total += float(loss)
        count += w[:, 1:].numel()
    model.train()
    return total / max(count, 1)


@torch.no_grad()
def greedy_sample(model, prompt, n_new):
    model.eval()
    toks = list(prompt.encode("utf-8"))
    seq_len = model.cfg["seq_len"]
    for _ in range(n_new):
        ctx = torch.tensor([toks[-seq_len:]], dtype=torch.long)
        toks.append(int(model(ctx)[0, -1].argmax()))
    model.train()
    return bytes(toks).decode("utf-8", errors="replace")


def schedule_progress(step, elapsed, args):
    """Fraction of the cosine decay done: by steps, or with --time-aware-lr by
    whichever of steps and wall-clock (--max-minutes) is further along."""
    frac = (step - args.warmup_steps) / max(1, args.steps - args.warmup_steps)
    if args.time_aware_lr and args.max_minutes > 0:
        frac = max(frac, elapsed / (args.max_minutes * 60.0))
    return min(max(frac, 0.0), 1.0)


def lr_at(step, elapsed, args):
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    frac = schedule_progress(step, elapsed, args)
    return args.min_lr + 0.5 * (args.lr - args.min_lr) * (1.0 + math.cos(math.pi * frac))


class Logger:
    def __init__(self, path):
        self.f = open(path, "a", encoding="utf-8")

    def __call__(self, msg=""):
        print(msg, flush=True)
        self.f.write(msg + "\n")
        self.f.flush()


def build_args():
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example (the project model):\n"
               "  nice -n 10 /usr/bin/python3 tools/train_tiny_lm.py --out-dir models/kjv-gqa-6l \\\n"
               "      --dim 256 --n-heads 4 --n-kv-heads 2 --n-layers 6 --hidden-dim 768 --steps 800\n")
    g = p.add_argument_group("model shape (llama2.c header fields)")
    g.add_argument("--dim", type=int, default=256, help="model width (default 256)")
    g.add_argument("--n-heads", type=int, default=4, help="query heads; head_dim = dim / n_heads (default 4)")
    g.add_argument("--n-kv-heads", type=int, default=2,
                   help="key/value heads (GQA), must divide n_heads (default 2)")
    g.add_argument("--n-layers", type=int, default=6, help="transformer blocks (default 6)")
    g.add_argument("--hidden-dim", type=int, default=768, help="SwiGLU FFN width (default 768)")
    g.add_argument("--seq-len", type=int, default=512,
                   help="context length trained on and written to the header (default 512)")
    g.add_argument("--shared-classifier", action="store_true",
                   help="tie the output classifier to the token embedding (header vocab_size "
                        "positive). Default: separate classifier, vocab_size written as -256")
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=int, default=800,
                   help="optimizer steps; the cosine LR schedule spans this many (default 800)")
    g.add_argument("--max-minutes", type=float, default=0.0,
                   help="hard wall-clock stop (0 = none). The run then ends early, keeping the "
                        "best checkpoint; the LR schedule is not shortened")
    g.add_argument("--time-aware-lr", action="store_true",
                   help="with --max-minutes: the cosine decay follows whichever of step count and "
                        "wall-clock is further along, so a run slowed by a busy machine still anneals "
                        "to --min-lr by the deadline (the data order stays seeded; the step count at "
                        "which training ends then depends on the machine)")
    g.add_argument("--batch-size", type=int, default=8, help="windows per step (default 8)")
    g.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default 2e-3)")
    g.add_argument("--min-lr", type=float, default=2e-4, help="final learning rate (default 2e-4)")
    g.add_argument("--warmup-steps", type=int, default=40, help="linear warm-up steps (default 40)")
    g.add_argument("--weight-decay", type=float, default=0.1,
                   help="AdamW weight decay on matrices (norm gains excluded; default 0.1)")
    g.add_argument("--beta2", type=float, default=0.95, help="AdamW beta2 (beta1 0.9; default 0.95)")
    g.add_argument("--grad-clip", type=float, default=1.0, help="global grad-norm clip (default 1.0)")
    g.add_argument("--seed", type=int, default=1234, help="seed of init and window order (default 1234)")
    g.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    g = p.add_argument_group("evaluation and logging")
    g.add_argument("--eval-interval", type=int, default=50, help="steps between evaluations (default 50)")
    g.add_argument("--eval-windows", type=int, default=24,
                   help="eval-split windows used by periodic evaluations (default 24; the final "
                        "evaluation uses all windows of the eval split)")
    g.add_argument("--log-interval", type=int, default=10, help="steps between log lines (default 10)")
    g = p.add_argument_group("data and output")
    g.add_argument("--out-dir", required=True, help="where model.bin, tokenizer.bin, logs go")
    g.add_argument("--data-dir", default=None,
                   help="where kjv_calib.txt and kjv_eval.txt are written "
                        "(default: <out-dir>/../data)")
    g.add_argument("--kjv-text", default=None,
                   help="read `bible` output from this file instead of running %s" % " ".join(BIBLE_CMD))
    g.add_argument("--fortunes", action="store_true",
                   help="also train on the fortune files of %s (training split only)" % FORTUNE_DIR)
    g.add_argument("--split-cap-bytes", type=int, default=150000,
                   help="cap of each written held-out split, cut at a chapter boundary (default 150000)")
    g.add_argument("--ckpt", default=None,
                   help="torch checkpoint of the best model (default <temp dir>/kvwire-train/"
                        "<out-dir name>.pt; kept out of the repository)")
    g.add_argument("--init-from", default=None,
                   help="start from the weights of this torch checkpoint (same shape) instead of a random "
                        "init: continues an earlier run with a fresh optimizer and LR schedule")
    g.add_argument("--sample-bytes", type=int, default=240, help="length of greedy samples (default 240)")
    return p


def main():
    args = build_args().parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    if args.dim % args.n_heads or args.n_heads % args.n_kv_heads or (args.dim // args.n_heads) % 2:
        sys.exit("dim must divide by n_heads, n_heads by n_kv_heads, head_dim must be even")

    os.makedirs(args.out_dir, exist_ok=True)
    data_dir = args.data_dir or os.path.join(os.path.dirname(os.path.abspath(args.out_dir)), "data")
    os.makedirs(data_dir, exist_ok=True)
    ckpt = args.ckpt or os.path.join(tempfile.gettempdir(), "kvwire-train",
                                     os.path.basename(os.path.abspath(args.out_dir)) + ".pt")
    os.makedirs(os.path.dirname(os.path.abspath(ckpt)), exist_ok=True)
    log_path = os.path.join(args.out_dir, "train_log.txt")
    if os.path.exists(log_path):
        os.remove(log_path)
    log = Logger(log_path)
    t_start = time.time()
    log("# train_tiny_lm.py  started %s" % time.strftime("%Y-%m-%d %H:%M:%S %Z"))
    log("# command: %s" % " ".join([os.path.basename(sys.executable)] + sys.argv))
    log("# torch %s, numpy %s, threads %d" % (torch.__version__, np.__version__, torch.get_num_threads()))

    chapters = load_kjv(args.kjv_text)
    train_ch, calib_ch, eval_ch = split_chapters(chapters)
    train_text = "\n".join(train_ch)
    calib_text, n_calib = join_capped(calib_ch, args.split_cap_bytes)
    eval_text, n_eval = join_capped(eval_ch, args.split_cap_bytes)
    for name, text in (("kjv_calib.txt", calib_text), ("kjv_eval.txt", eval_text)):
        with open(os.path.join(data_dir, name), "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
    train_bytes = train_text.encode("utf-8")
    n_fortunes = 0
    if args.fortunes:
        fortunes = load_fortunes(FORTUNE_DIR)
        n_fortunes = len(fortunes)
        train_bytes += b"\n" + b"\n".join(fortunes)
    eval_bytes = eval_text.encode("utf-8")
    calib_bytes = calib_text.encode("utf-8")
    ent, xent = unigram_stats(train_bytes, eval_bytes)
    log("# data: %d chapters -> train %d (%d bytes%s), calib %d of %d written (%d bytes), "
        "eval %d of %d written (%d bytes)" % (
            len(chapters), len(train_ch), len(train_bytes),
            ", incl. %d fortunes" % n_fortunes if args.fortunes else "",
            n_calib, len(calib_ch), len(calib_bytes), n_eval, len(eval_ch), len(eval_bytes)))
    # Relative to the working directory, so a committed log names no machine's layout.
    log("# held-out files: %s, %s" % (os.path.relpath(os.path.join(data_dir, "kjv_calib.txt")),
                                     os.path.relpath(os.path.join(data_dir, "kjv_eval.txt"))))
    log("# unigram baseline on eval split: entropy %.4f nats/byte (own distribution), "
        "train-unigram cross-entropy %.4f nats/byte" % (ent, xent))

    cfg = dict(dim=args.dim, hidden_dim=args.hidden_dim, n_layers=args.n_layers, n_heads=args.n_heads,
               n_kv_heads=args.n_kv_heads, vocab_size=256, seq_len=args.seq_len,
               shared_classifier=args.shared_classifier)
    model = TinyLlama(cfg)
    if args.init_from:
        init = torch.load(args.init_from)
        if init["cfg"] != cfg:
            sys.exit("--init-from %s: its shape %s differs from %s" % (args.init_from, init["cfg"], cfg))
        model.load_state_dict(init["model"])
        log("# initialised from %s (its step %s, val_loss %s)" % (args.init_from, init.get("step"), init.get("val")))
    n_params = count_params(model)
    log("# model: %s, head_dim %d, params %d (%.2f MB fp32)" % (
        json.dumps(cfg), args.dim // args.n_heads, n_params, n_params * 4 / 1e6))
    log("# optim: AdamW lr %g -> %g cosine, warmup %d, steps %d, batch %d x %d tokens, wd %g, clip %g, "
        "seed %d, max-minutes %g, time-aware-lr %s" % (
            args.lr, args.min_lr, args.warmup_steps, args.steps, args.batch_size, args.seq_len,
            args.weight_decay, args.grad_clip, args.seed, args.max_minutes, args.time_aware_lr))

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, args.beta2), eps=1e-8)

    train_data = torch.from_numpy(np.frombuffer(train_bytes, dtype=np.uint8).copy())
    eval_data = torch.from_numpy(np.frombuffer(eval_bytes, dtype=np.uint8).copy())
    periodic_starts = eval_windows(eval_data, args.seq_len, args.eval_windows)
    all_starts = eval_windows(eval_data, args.seq_len, 0)
    gen = torch.Generator().manual_seed(args.seed)
    T = args.seq_len

    stop = {"flag": False}

    def on_signal(signum, _frame):
        stop["flag"] = True
        log("# signal %d: stopping after this step" % signum)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    best = {"val": float("inf"), "step": -1}
    history = []
    run_losses = []
    t_train = time.time()
    t_last = t_train
    tok_since = 0
    step = 0
    val = float("nan")
    while step < args.steps:
        lr = lr_at(step, time.time() - t_train, args)
        for group in opt.param_groups:
            group["lr"] = lr
        ix = torch.randint(len(train_data) - T - 1, (args.batch_size,), generator=gen)
        w = torch.stack([train_data[i:i + T + 1] for i in ix.tolist()]).long()
        logits = model(w[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), w[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip))
        opt.step()
        run_losses.append(float(loss))
        tok_since += args.batch_size * T
        step += 1
        elapsed = time.time() - t_train
        out_of_time = args.max_minutes > 0 and elapsed > args.max_minutes * 60
        if args.time_aware_lr and step > args.warmup_steps:
            out_of_time = out_of_time or schedule_progress(step, elapsed, args) >= 1.0
        last = step == args.steps or out_of_time or stop["flag"]
        do_eval = step % args.eval_interval == 0 or last
        if step % args.log_interval == 0 or do_eval:
            now = time.time()
            tps = tok_since / max(now - t_last, 1e-9)
            t_last, tok_since = now, 0
            train_loss = sum(run_losses) / len(run_losses)
            run_losses = []
            val_str = ""
            if do_eval:
                val = evaluate(model, eval_data, periodic_starts, T, args.batch_size)
                val_str = " | val_loss %.4f" % val
                if val < best["val"]:
                    best = {"val": val, "step": step}
                    torch.save({"cfg": cfg, "model": model.state_dict(), "step": step, "val": val}, ckpt)
                    export_llama2c(model, os.path.join(args.out_dir, "model.bin"))
                    val_str += " (best, exported)"
                t_last = time.time()  # evaluation time is not counted in tokens/s
            log("step %5d | train_loss %.4f%s | lr %.2e | gnorm %.3f | tok/s %.0f | elapsed %.1fs" % (
                step, train_loss, val_str, lr, gnorm, tps, time.time() - t_start))
            history.append({"step": step, "train_loss": train_loss,
                            "val_loss": val if do_eval else None, "elapsed_s": time.time() - t_start})
        if out_of_time:
            log("# --max-minutes reached at step %d" % step)
        if last:
            break

    train_seconds = time.time() - t_train
    log("# training stopped at step %d after %.1f s; best periodic val_loss %.4f at step %d" % (
        step, train_seconds, best["val"], best["step"]))
    state = torch.load(ckpt)
    model.load_state_dict(state["model"])
    final_val = evaluate(model, eval_data, all_starts, T, args.batch_size)
    log("# final (best checkpoint, step %d) val_loss on all %d eval windows: %.4f nats/byte "
        "(%.4f bits/byte, ppl %.3f); unigram entropy %.4f, train-unigram xent %.4f" % (
            best["step"], len(all_starts), final_val, final_val / math.log(2), math.exp(final_val), ent, xent))
    model_path = os.path.join(args.out_dir, "model.bin")
    tok_path = os.path.join(args.out_dir, "tokenizer.bin")
    export_llama2c(model, model_path)
    export_byte_tokenizer(tok_path)
    samples = {}
    for prompt in ("In the beginning", "And Jesus said unto them, ", "The LORD is my shepherd"):
        samples[prompt] = greedy_sample(model, prompt, args.sample_bytes)
        log("# greedy sample: %s" % json.dumps(samples[prompt]))
    sums = {os.path.basename(pth): sha256_file(pth) for pth in (model_path, tok_path)}
    with open(os.path.join(args.out_dir, "SHA256SUMS"), "w") as f:
        for name, digest in sums.items():
            f.write("%s  %s\n" % (digest, name))
    summary = {
        "config": cfg, "head_dim": args.dim // args.n_heads, "params": n_params,
        "model_bin_bytes": os.path.getsize(model_path), "args": vars(args),
        "data": {"chapters": len(chapters), "train_chapters": len(train_ch), "train_bytes": len(train_bytes),
                 "calib_chapters_written": n_calib, "eval_chapters_written": n_eval,
                 "calib_bytes": len(calib_bytes), "eval_bytes": len(eval_bytes), "fortunes": n_fortunes},
        "unigram_entropy_nats": ent, "train_unigram_xent_nats": xent,
        "best_step": best["step"], "best_periodic_val": best["val"], "final_val_loss_all_windows": final_val,
        "eval_windows_all": len(all_starts), "steps_done": step,
        "tokens_trained": step * args.batch_size * T, "train_seconds": train_seconds,
        "wall_seconds": time.time() - t_start, "sha256": sums, "samples": samples, "history": history,
    }
    with open(os.path.join(args.out_dir, "train_summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    log("# done in %.1f s wall; wrote %s" % (time.time() - t_start, ", ".join(sorted(sums) + ["SHA256SUMS"])))


if __name__ == "__main__":
    main()
