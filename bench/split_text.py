#!/usr/bin/env python3
"""Splits a text file in two at the first line end at or past its middle byte.

usage: bench/split_text.py TEXT FIRST SECOND
Used to give a small external model (stories260K, whose sample text is ~30 KB) disjoint
calibration and evaluation text: FIRST calibrates (and holds diagnose's sweep windows),
SECOND is only ever evaluated on.
"""
import sys

src, first, second = sys.argv[1:4]
data = open(src, "rb").read()
cut = data.find(b"\n", len(data) // 2)
cut = len(data) if cut < 0 else cut + 1
open(first, "wb").write(data[:cut])
open(second, "wb").write(data[cut:])
print("%s: %d bytes -> %s (%d) + %s (%d)" % (src, len(data), first, cut, second, len(data) - cut))
