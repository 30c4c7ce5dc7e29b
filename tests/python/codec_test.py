"""encode/decode/inspect from Python: round trips, and the same bytes as the kvwire CLI."""

import os
import sys
import tempfile
import unittest

import numpy
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kvtest  # noqa: E402
import kvwire  # noqa: E402


def rel_rmse(ref, got):
    ref, got = numpy.asarray(ref, numpy.float64), numpy.asarray(got, numpy.float64)
    return float(numpy.sqrt(((got - ref) ** 2).sum() / (ref ** 2).sum()))


class RoundTrip(unittest.TestCase):
    def setUp(self):
        torch.manual_seed(3)
        self.kv16 = torch.randn(3, 2, 37, 2, 32, dtype=torch.float16)
        self.kv32 = numpy.random.default_rng(4).standard_normal((2, 2, 50, 4, 32)).astype("float32")

    def test_fp16_codec_is_bit_exact_for_torch_fp16(self):
        stream = kvwire.encode(self.kv16, codec="fp16")
        info = kvwire.inspect(stream)
        self.assertEqual(info["shape"], (3, 2, 37, 2, 32))
        self.assertEqual(info["dtype"], "float16")
        self.assertEqual(info["codec"], "fp16")
        self.assertEqual(info["bytes"], len(stream))
        self.assertAlmostEqual(info["bits_per_element"], len(stream) * 8 / self.kv16.numel())
        back = kvwire.decode(stream)
        self.assertIsInstance(back, numpy.ndarray)
        self.assertTrue(kvtest.same_bits(back, self.kv16.numpy()))
        out = torch.zeros_like(self.kv16)
        self.assertIs(kvwire.decode(stream, out=out), out)
        self.assertTrue(torch.equal(out, self.kv16))

    def test_fp16_codec_of_numpy_float32(self):
        stream = kvwire.encode(self.kv32, codec="fp16", chunk_tokens=16)
        self.assertEqual(kvwire.inspect(stream)["chunks"], 2 * 2 * 4)
        back = kvwire.decode(stream)
        self.assertEqual(back.dtype, numpy.float32)
        self.assertTrue(kvtest.same_bits(back, self.kv32.astype("float16").astype("float32")))

    def test_quantized_codecs_are_close(self):
        for codec, bound in (("int8", 0.02), ("q4_0", 0.2)):
            for kv in (self.kv16.numpy(), self.kv32):
                back = kvwire.decode(kvwire.encode(kv, codec=codec))
                self.assertEqual(back.dtype, kv.dtype)
                self.assertLess(rel_rmse(kv, back), bound, codec)
                self.assertGreater(rel_rmse(kv, back), 0, codec)

    def test_bfloat16_torch(self):
        # Multiples of 1/16 below 8: exact in bfloat16 and in float16 alike.
        kv = (torch.round(self.kv16.float() * 16) / 16).to(torch.bfloat16)
        stream = kvwire.encode(kv, codec="fp16")
        self.assertEqual(kvwire.inspect(stream)["dtype"], "bfloat16")
        back = kvwire.decode(stream)  # no numpy bfloat16: a torch tensor
        self.assertEqual(back.dtype, torch.bfloat16)
        self.assertTrue(torch.equal(back, kv))
        as32 = kvwire.decode(stream, out=numpy.empty(tuple(kv.shape), "float32"))
        self.assertTrue(numpy.array_equal(as32, kv.float().numpy()))

    def test_paged_source_encodes_like_contiguous(self):
        kv = self.kv16  # 37 tokens in blocks of 8: 5 blocks, the last one partly used
        paged = [torch.full((2, 9, 8, 2, 32), 7.0, dtype=torch.float16) for _ in range(3)]
        blocks = [6, 2, 8, 0, 4]
        for layer in range(3):
            for t in range(37):
                paged[layer][:, blocks[t // 8], t % 8] = kv[layer, :, t]
        expected = kvwire.encode(kv, codec="int8")
        got = kvwire.encode(paged, codec="int8", block_ids=blocks, tokens=37)
        self.assertEqual(got, expected)
        out = [torch.full((2, 9, 8, 2, 32), -1.0, dtype=torch.float16) for _ in range(3)]
        kvwire.decode(kvwire.encode(kv), out=out, block_ids=blocks)
        for layer in range(3):
            for t in range(37):
                self.assertTrue(torch.equal(out[layer][:, blocks[t // 8], t % 8], kv[layer, :, t]))
            self.assertTrue(bool((out[layer][:, 1] == -1).all()))


def paged_cache(layout, order, layers, num_blocks, block, heads, dim, fill, dtype):
    """Per-layer paged tensors of `layout` whose memory is NHD or HND (allocated with heads
    before slots, then permuted to the logical shape, as vLLM does)."""
    out = []
    for _ in range(layers):
        outer = (2, num_blocks) if layout == "flash_attn" else (num_blocks, 2)
        if order == "NHD":
            t = torch.full((*outer, block, heads, dim), fill, dtype=dtype)
        else:
            t = torch.full((*outer, heads, block, dim), fill, dtype=dtype).permute(0, 1, 3, 2, 4)
        out.append(t)
    return out


def token_slot(cache, layout, layer, block, slot):
    """The (2, heads, dim) K|V elements of one slot of a paged cache."""
    if layout == "flash_attn":
        return cache[layer][:, block, slot]
    return cache[layer][block, :, slot]


class Layouts(unittest.TestCase):
    """The same logical KV in every layout encodes to the same bytes, and decodes in place."""

    LAYOUTS = [(layout, order) for layout in ("flash_attn", "flashinfer")
               for order in ("NHD", "HND")]

    def setUp(self):
        torch.manual_seed(8)
        self.blocks = [6, 2, 8, 0, 4]  # 37 tokens in blocks of 8: the last block partly used

    def fill(self, kv, layout, order):
        layers = kv.shape[0]
        cache = paged_cache(layout, order, layers, 9, 8, kv.shape[3], kv.shape[4], 7.0, kv.dtype)
        for layer in range(layers):
            for t in range(kv.shape[2]):
                token_slot(cache, layout, layer, self.blocks[t // 8], t % 8)[:] = kv[layer, :, t]
        return cache

    def test_every_layout_encodes_to_the_same_bytes(self):
        for dtype in (torch.float16, torch.bfloat16, torch.float32):
            kv = torch.randn(3, 2, 37, 4, 16).to(dtype)
            for codec in ("fp16", "int8"):
                expected = kvwire.encode(kv, codec=codec)
                for layout, order in self.LAYOUTS:
                    cache = self.fill(kv, layout, order)
                    self.assertEqual(order == "HND", not cache[0].is_contiguous())
                    got = kvwire.encode(cache, codec=codec, block_ids=self.blocks, tokens=37,
                                        layout=layout)
                    self.assertEqual(got, expected, (dtype, codec, layout, order))

    def test_strided_contiguous_cache_encodes_like_a_packed_one(self):
        kv = torch.randn(3, 2, 37, 4, 16, dtype=torch.float16)
        heads_first = kv.permute(0, 1, 3, 2, 4).contiguous().permute(0, 1, 3, 2, 4)
        self.assertFalse(heads_first.is_contiguous())
        every_other_layer = torch.stack([kv, kv], 1).reshape(6, 2, 37, 4, 16)[::2]
        for strided in (heads_first, every_other_layer):
            self.assertEqual(kvwire.encode(strided, codec="int8"), kvwire.encode(kv, codec="int8"))

    def test_decode_writes_exactly_the_sequence_slots(self):
        for dtype in (torch.float16, torch.bfloat16):
            kv = torch.randn(3, 2, 37, 4, 16).to(dtype)
            stream = kvwire.encode(kv, codec="fp16")
            for layout, order in self.LAYOUTS:
                cache = paged_cache(layout, order, 3, 9, 8, 4, 16, -3.0, dtype)
                canary = [c.clone() for c in cache]
                kvwire.decode(stream, out=cache, block_ids=self.blocks, layout=layout)
                for layer in range(3):
                    for t in range(37):
                        slot = token_slot(cache, layout, layer, self.blocks[t // 8], t % 8)
                        self.assertTrue(torch.equal(slot, kv[layer, :, t]),
                                        (layout, order, layer, t))
                        token_slot(canary, layout, layer, self.blocks[t // 8], t % 8)[:] = slot
                    # Everything but the sequence's slots still holds the canary value.
                    self.assertTrue(torch.equal(cache[layer], canary[layer]), (layout, order))


class SameBytesAsCli(unittest.TestCase):
    """fraqtl@2 with a calibrated profile: Python's stream and decode equal the CLI's."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="kvwire_py_codec_")
        d = cls.tmp.name
        cls.dump = os.path.join(d, "kv.safetensors")
        cls.kvp = os.path.join(d, "p.kvp")
        cls.kvw = os.path.join(d, "f.kvw")
        cls.back = os.path.join(d, "back.safetensors")
        kvtest.run_cli("synth", "--out", cls.dump, "--layers", 2, "--kv-heads", 2, "--head-dim", 64,
                       "--tokens", 256, "--q-heads", 4, "--seed", 11)
        kvtest.run_cli("calibrate", "--dumps", cls.dump, "--out", cls.kvp)
        kvtest.run_cli("encode", "--in", cls.dump, "--codec", "fraqtl@2", "--profile", cls.kvp,
                       "--out", cls.kvw)
        kvtest.run_cli("decode", "--in", cls.kvw, "--profile", cls.kvp, "--out", cls.back)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_stream_and_decode_match_the_cli(self):
        kv, meta = kvtest.load_dump(self.dump)
        profile = kvwire.Profile.load(self.kvp)
        self.assertTrue(profile.id.startswith("sha256:"))
        self.assertEqual((profile.layers, profile.kv_heads, profile.head_dim), (2, 2, 64))
        stream = kvwire.encode(kv, codec="fraqtl@2", profile=profile,
                               **kvtest.metadata_kwargs(meta))
        with open(self.kvw, "rb") as f:
            cli_stream = f.read()
        self.assertEqual(stream, cli_stream)
        self.assertEqual(kvwire.inspect(stream)["profile_id"], profile.id)
        decoded = kvwire.decode(stream, profile=profile)
        cli_decoded, _ = kvtest.load_dump(self.back)
        self.assertTrue(kvtest.same_bits(decoded, cli_decoded))
        self.assertLess(rel_rmse(kv, decoded), 1.0)

    def test_profile_codec_needs_its_profile(self):
        with open(self.kvw, "rb") as f:
            stream = f.read()
        with self.assertRaises(kvwire.Error) as e:
            kvwire.decode(stream)
        self.assertIn("profile", str(e.exception))
        kv, _ = kvtest.load_dump(self.dump)
        with self.assertRaises(kvwire.Error):
            kvwire.encode(kv, codec="fraqtl@2")


if __name__ == "__main__":
    unittest.main()
