"""What kvwire says when it cannot do what it is asked: ValueError for tensors it cannot use,
kvwire.Error (with the C++ status code) for everything the C++ API refuses."""

import builtins
import os
import sys
import unittest

import numpy
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kvwire  # noqa: E402


class FakeCudaTensor:
    """Answers the attributes kvwire reads from a torch tensor, on a CUDA device."""

    class device:  # noqa: N801
        type = "cuda"

    dtype = "torch.float16"
    shape = (1, 2, 4, 1, 8)

    def data_ptr(self):
        return 0

    def element_size(self):
        return 2

    def stride(self):
        return (64, 32, 8, 8, 1)


class TensorErrors(unittest.TestCase):
    def assert_value_error(self, kv, *fragments, **kwargs):
        with self.assertRaises(ValueError) as e:
            kvwire.encode(kv, **kwargs)
        for f in fragments:
            self.assertIn(f, str(e.exception))

    def test_wrong_rank(self):
        self.assert_value_error(numpy.zeros((2, 4, 8), "float16"), "(2, 4, 8)",
                                "expected (layers, 2, tokens, kv_heads, head_dim)")
        self.assert_value_error(torch.zeros(2, 3, 4, 1, 8, dtype=torch.float16), "(2, 3, 4, 1, 8)")

    def test_head_dim_not_contiguous_or_elements_shared(self):
        kv = torch.zeros(2, 2, 16, 8, 4, dtype=torch.float16).transpose(3, 4)
        self.assert_value_error(kv, "last dimension (head_dim)", "must be contiguous")
        a = numpy.zeros((2, 2, 4, 8, 16), "float32").transpose(0, 1, 2, 4, 3)
        self.assert_value_error(a, "head_dim")
        expanded = torch.zeros(2, 2, 1, 4, 8, dtype=torch.float16).expand(2, 2, 16, 4, 8)
        self.assert_value_error(expanded, "zero or negative stride", ".contiguous()")
        flat = torch.zeros(2 * 2 * 16 * 32, dtype=torch.float16)
        overlapping = flat.as_strided((2, 2, 16, 4, 8), (512, 256, 16, 8, 1))  # tokens overlap
        self.assert_value_error(overlapping, "share memory")
        flipped = numpy.zeros((2, 2, 16, 4, 8), "float16")[:, :, ::-1]
        self.assert_value_error(flipped, "zero or negative stride")

    def test_wrong_dtype(self):
        self.assert_value_error(numpy.zeros((1, 2, 4, 1, 8), "float64"), "float16 or float32")
        self.assert_value_error(torch.zeros(1, 2, 4, 1, 8, dtype=torch.int32), "torch.int32",
                                "torch.float16, torch.bfloat16 or torch.float32")

    def test_not_a_tensor_or_not_on_the_cpu(self):
        self.assert_value_error(FakeCudaTensor(), "device 'cuda'", "CPU")
        self.assert_value_error([[1.0]], "kv[0] is a list", block_ids=[0])
        with self.assertRaises(ValueError) as e:
            kvwire.encode("text")
        self.assertIn("numpy array or a torch tensor", str(e.exception))

    def test_paged_mistakes(self):
        layer = torch.zeros(2, 4, 8, 1, 8, dtype=torch.float16)
        self.assert_value_error([layer], "block_ids is required")
        self.assert_value_error([layer, layer[:, :2]], "kv[1]", "those of layer 0", block_ids=[0])
        self.assert_value_error([layer], "4 tokens need 1 block ids", block_ids=[0, 1], tokens=4)
        self.assert_value_error([layer], "block", block_ids=[9])  # beyond num_blocks = 4
        hnd = torch.zeros(2, 4, 2, 8, 8, dtype=torch.float16).transpose(2, 3)
        nhd = torch.zeros(2, 4, 8, 2, 8, dtype=torch.float16)
        self.assert_value_error([nhd, hnd], "kv[1] has strides", "those of layer 0",
                                block_ids=[0])
        self.assert_value_error([layer], "layout 'nhd' is unknown", "'flashinfer'", block_ids=[0],
                                layout="nhd")
        self.assert_value_error([layer], "(num_blocks, 2, block_size, kv_heads, head_dim)",
                                block_ids=[0], layout="flashinfer")
        self.assert_value_error(torch.zeros(1, 2, 4, 1, 8, dtype=torch.float16),
                                "layouts apply to paged caches", layout="flashinfer")

    def test_read_only_destination(self):
        stream = kvwire.encode(numpy.ones((1, 2, 4, 1, 8), "float16"))
        out = numpy.zeros((1, 2, 4, 1, 8), "float16")
        out.flags.writeable = False
        with self.assertRaises(ValueError) as e:
            kvwire.decode(stream, out=out)
        self.assertIn("writable", str(e.exception))


class StatusErrors(unittest.TestCase):
    def setUp(self):
        self.kv = numpy.random.default_rng(1).standard_normal((2, 2, 16, 2, 32)).astype("float16")
        self.stream = kvwire.encode(self.kv, codec="q4_0")

    def test_corrupt_stream(self):
        bad = bytearray(self.stream)
        bad[len(bad) // 2] ^= 0x40
        for broken in (bytes(bad), self.stream[:-7], b"not a kvwire stream at all" * 4):
            for call in (kvwire.decode, kvwire.inspect):
                with self.assertRaises(kvwire.Error) as e:
                    call(broken)
                self.assertTrue(str(e.exception))
                self.assertIn(e.exception.code, ("corrupt", "truncated"))
        with self.assertRaises(kvwire.Error) as e:
            kvwire.decode(bytes(bad))
        self.assertIn("CRC32C", str(e.exception))

    def test_unknown_codec_and_wrong_destination_shape(self):
        with self.assertRaises(kvwire.Error) as e:
            kvwire.encode(self.kv, codec="nosuchcodec")
        self.assertEqual(e.exception.code, "not found")
        self.assertIn("nosuchcodec", str(e.exception))
        with self.assertRaises(kvwire.Error):
            kvwire.decode(self.stream, out=numpy.zeros((2, 2, 15, 2, 32), "float16"))

    def test_timeouts_are_both_kvwire_and_builtin_timeout_errors(self):
        self.assertTrue(issubclass(kvwire.TimeoutError, kvwire.Error))
        self.assertTrue(issubclass(kvwire.TimeoutError, builtins.TimeoutError))
        with kvwire.Receiver.listen("127.0.0.1:0", insecure=True) as rx:
            with self.assertRaises(kvwire.TimeoutError) as e:
                rx.next_request(timeout_ms=50)
            self.assertEqual(e.exception.code, "timeout")
            with self.assertRaises(kvwire.Error):
                rx.wait(12345, timeout_ms=10)  # no such request

    def test_missing_profile_file(self):
        with self.assertRaises(kvwire.Error) as e:
            kvwire.Profile.load("/nonexistent/kvwire.kvp")
        self.assertIn("/nonexistent/kvwire.kvp", str(e.exception))
        with self.assertRaises(TypeError):
            kvwire.encode(self.kv, profile="a path, not a Profile")

    def test_connect_needs_a_key_or_insecure(self):
        with self.assertRaises(ValueError) as e:
            kvwire.Sender.connect("127.0.0.1:1")
        self.assertIn("insecure=True", str(e.exception))
        with self.assertRaises(kvwire.Error):
            kvwire.Sender.connect("127.0.0.1:1", insecure=True, connect_timeout_ms=200,
                                  reconnect_window_ms=0)


if __name__ == "__main__":
    unittest.main()
