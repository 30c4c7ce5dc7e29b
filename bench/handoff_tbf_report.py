#!/usr/bin/python3
"""Tables for bench/handoff_tbf.sh: medians per codec, ratios vs fp16, OUT.json and OUT.md."""
import argparse
import json
import os
import platform
import statistics
import subprocess
import time


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def main():
    p = argparse.ArgumentParser()
    for a in ("runs", "codec-speed", "out", "command", "env", "kv", "rate", "load-before",
              "load-after", "kvwire", "profile"):
        p.add_argument("--" + a, required=True)
    a = p.parse_args()

    runs = [json.loads(l) for l in open(a.runs) if l.strip()]
    speed = json.load(open(a.codec_speed))
    speed_by = {c["codec"]: c for c in speed["codecs"]}
    order, by = [], {}
    for r in runs:
        if r["codec"] not in by:
            order.append(r["codec"])
            by[r["codec"]] = []
        by[r["codec"]].append(r)

    first = runs[0]["send"]
    elements, raw = first["elements"], first["raw_bytes"]
    link = {"1gbit": 125e6}.get(a.rate, None)
    rows = []
    for c in order:
        rs = by[c]
        send = [r["send"]["send_s"] for r in rs]
        wall = [r["wall_s"] for r in rs]
        ready = [r["serve_kv_ready_s"] for r in rs]
        wire = rs[0]["send"]["wire_bytes"]
        sp = speed_by.get(c) or next((v for k, v in speed_by.items() if k.startswith(c + ":")), {})
        chosen = {}  # an adaptive ladder: chunks per level over all runs
        for r in rs:
            for lv in r["send"].get("levels", []):
                if lv.get("chunks"):
                    chosen[lv["codec"]] = chosen.get(lv["codec"], 0) + lv["chunks"]
        rows.append({
            "codec": c,
            "runs": len(rs),
            "wire_bytes": wire,
            "bits_per_element": wire * 8 / elements,
            "send_s_median": statistics.median(send),
            "send_s_all": send,
            "wall_s_median": statistics.median(wall),
            "wall_s_all": wall,
            "serve_kv_ready_s_median": statistics.median(ready),
            "load_s": statistics.median(r["send"]["load_s"] for r in rs),
            "measure_bits_s": statistics.median(r["send"]["measure_bits_s"] for r in rs),
            "connect_s": statistics.median(r["send"]["connect_s"] for r in rs),
            "reconnects": sum(r["send"]["reconnects"] for r in rs),
            "levels_chosen": chosen if "," in c else None,
            "link_s": wire / link if link else None,
            "encode_gbps": sp.get("encode_gbps"),
            "decode_gbps": sp.get("decode_gbps"),
            "encode_s_est": raw / 1e9 / sp["encode_gbps"] if sp.get("encode_gbps") else None,
            "decode_s_est": raw / 1e9 / sp["decode_gbps"] if sp.get("decode_gbps") else None,
        })
    base = next((r for r in rows if r["codec"] == "fp16"), None)
    for r in rows:
        if base:
            r["bytes_ratio_vs_fp16"] = base["wire_bytes"] / r["wire_bytes"]
            r["speedup_vs_fp16"] = base["send_s_median"] / r["send_s_median"]
            r["wall_speedup_vs_fp16"] = base["wall_s_median"] / r["wall_s_median"]
            r["meets_4x"] = r["speedup_vs_fp16"] >= 4.0

    meta = {
        "command": a.command,
        "environment": a.env,
        # When the last transfer finished (the report may be regenerated later from the runs).
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(os.path.getmtime(a.runs))),
        "machine": {"cpu": cpu_model(), "nproc": os.cpu_count(), "kernel": platform.release()},
        "load_average_before": a.load_before,
        "load_average_after": a.load_after,
        "kvwire": a.kvwire,
        "git": subprocess.run(["git", "-C", os.path.dirname(os.path.abspath(__file__)), "describe",
                               "--always", "--dirty"], capture_output=True, text=True).stdout.strip(),
        # Tracked files that differ from that commit when the report was written (the binary
        # was built from the working tree, which may hold other people's unfinished changes).
        "git_modified": subprocess.run(
            ["git", "-C", os.path.dirname(os.path.abspath(__file__)), "diff", "--name-only",
             "HEAD", "--", ":/src", ":/include", ":/tools", ":/kernels"], capture_output=True,
            text=True).stdout.split(),
        "kvwire_built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(os.path.getmtime(
            os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), a.kvwire)))),
        "kv": os.path.basename(a.kv),
        "shape": first["shape"],
        "elements": elements,
        "fp16_bytes": raw,
        "link": (a.rate + ", tbf on both veth ends (burst 256kb, latency 50ms)" if a.rate != "none"
                 else "veth, not shaped") + ", tcp backend",
        "profile": os.path.basename(a.profile),
        "chunk_tokens": 2048,
        "codec_speed": {"data": speed.get("data"), "shape": speed.get("shape"),
                        "encode_threads": speed.get("encode_threads"),
                        "memcpy_gbps": speed.get("memcpy_gbps")},
        "send_s": "kvwire send --json send_s: Open -> receiver confirmed every chunk decoded "
                  "(encode + wire + decode, pipelined)",
        "wall_s": "the kvwire send process, start to exit",
    }
    with open(a.out + ".json", "w") as f:
        json.dump({**meta, "codecs": rows}, f, indent=2)
        f.write("\n")

    def fmt(x, spec):
        return "-" if x is None else format(x, spec)

    sh = first["shape"]
    lines = [
        f"# KV handoff over a veth pair ({'tbf ' + a.rate if a.rate != 'none' else 'not shaped'}):"
        " fp16 vs compressed (bench/handoff_tbf.sh)",
        "",
        f"Command: `{a.command}` with `{a.env}`  ",
        f"Date {meta['date']}; kvwire built {meta['kvwire_built']} from the working tree at "
        f"git `{meta['git']}` (source files differing from that commit: "
        f"{', '.join(meta['git_modified']) or 'none'}); {meta['machine']['cpu']} x"
        f"{meta['machine']['nproc']} (shared), kernel {meta['machine']['kernel']}; load average "
        f"{a.load_before} before, {a.load_after} after.  ",
        f"Link: {meta['link']}; sender and receiver in two network namespaces on the same 2 "
        f"cores.  ",
        f"KV: models/kjv-gqa-6l over the eval text, {sh['layers']} layers x {sh['tokens']:,} "
        f"tokens x {sh['kv_heads']} kv heads x {sh['head_dim']}, {raw:,} bytes of fp16 "
        f"({raw / 125e6:.2f} s at 125 MB/s); chunks of 2,048 tokens; fraqtl profile "
        f"`{meta['profile']}`. Median of {rows[0]['runs']} runs per codec.",
        "",
        "| codec | wire bytes | b/e all-in | bytes vs fp16 | link time | send s (median) | "
        "**speedup vs fp16** | >= 4x | wall s | wall speedup | enc GB/s | dec GB/s | "
        "enc time est. | reconnects |",
        "|---|---:|---:|---:|---:|---:|---:|:-:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['codec']} | {r['wire_bytes']:,} | {r['bits_per_element']:.3f} | "
            f"{fmt(r.get('bytes_ratio_vs_fp16'), '.2f')}x | {fmt(r['link_s'], '.3f')} | "
            f"{r['send_s_median']:.3f} ({min(r['send_s_all']):.3f}-{max(r['send_s_all']):.3f}) | "
            f"**{fmt(r.get('speedup_vs_fp16'), '.2f')}x** | "
            f"{'yes' if r.get('meets_4x') else 'no'} | {r['wall_s_median']:.2f} | "
            f"{fmt(r.get('wall_speedup_vs_fp16'), '.2f')}x | {fmt(r['encode_gbps'], '.3f')} | "
            f"{fmt(r['decode_gbps'], '.3f')} | {fmt(r['encode_s_est'], '.2f')} | "
            f"{r['reconnects']} |")
    lines += [
        "",
        "Columns: *link time* = wire bytes / 125 MB/s (the floor the link sets); *send s* = "
        "`kvwire send --json` `send_s`, from `Open()` until the receiver has acknowledged every "
        "chunk **decoded** into its KV cache and reported the request done (KV-ready; the "
        "receiver acknowledges a chunk only after decoding it), so encode, wire and decode time "
        "are all on the clock, pipelined chunk by chunk; *speedup* = fp16's median send s / "
        "the codec's; *wall s* = the whole `kvwire send` process (adds process start, reading "
        "the 200 MB dump, a probe encode of layer 0 that measures each level's bits/element, "
        "connect + HMAC authentication); *enc/dec GB/s* = `kvwire bench codec` on a 12-window "
        "slice of the same KV (fp16 bytes per second, one thread, same machine, run right after "
        "the transfers); *enc time est.* = fp16 bytes / enc GB/s, the encode time of the whole "
        "KV on one core; *reconnects* = over all runs of the codec (each costs >= 0.1 s).",
        "",
        "Not on the send clock: process start, reading the dump, the bits/element probe, "
        "connect + authentication (a serving node keeps its connection), and allocating the "
        "receiver's KV cache (`serve --discard` decodes into the one it allocated for the "
        "warm-up transfer, as a decode node decodes into its preallocated pool, and writes no "
        "file).",
    ]
    ladders = [r for r in rows if r.get("levels_chosen") is not None]
    if ladders:
        lines += ["", "Adaptive ladders (`LEVELS/DEADLINE_MS`: `kvwire send --codec LEVELS "
                  "--deadline-ms DEADLINE_MS`), chunks sent at each level over all runs:", ""]
        for r in ladders:
            lines.append(f"- {r['codec']}: " + ", ".join(
                f"{k} {v}" for k, v in sorted(r["levels_chosen"].items(), key=lambda kv: -kv[1])) +
                (f"; {r['speedup_vs_fp16']:.2f}x faster than fp16 (median send s)" if r.get("speedup_vs_fp16") else ""))
    if base:
        met = [r["codec"] for r in rows if r.get("meets_4x")]
        lines += ["", "## Verdict (computed)", "",
                  "Codecs whose handoff is >= 4x faster than fp16 (median send s): " +
                  (", ".join(met) if met else "**none**") + "."]
        lines.append("")
        for r in rows:
            stages = [x for x in (r["link_s"], r["encode_s_est"], r["decode_s_est"]) if x]
            if r["codec"] == "fp16" or not stages:  # fp16, or a ladder in an unshaped run
                continue
            floor = max(stages)
            what = ("the link" if r["link_s"] and floor == r["link_s"] else
                    "encode on one core" if floor == r["encode_s_est"] else "decode on one core")
            link = (f"would allow {base['send_s_median'] / r['link_s']:.2f}x on the link alone"
                    if r["link_s"] else "(no link limit in this run)")
            lines.append(
                f"- {r['codec']}: {r['speedup_vs_fp16']:.2f}x; {r['bytes_ratio_vs_fp16']:.2f}x "
                f"fewer bytes {link}; largest single-stage time {floor:.2f} s ({what}), "
                f"measured {r['send_s_median']:.2f} s.")
    lines += ["", "Interpretation and caveats: "
              "[docs/benchmarks.md](../../docs/benchmarks.md#handoff-over-a-shaped-link)."]
    with open(a.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines[7:9 + len(rows)]))
    print(f"wrote {a.out}.json, {a.out}.md")


if __name__ == "__main__":
    main()
