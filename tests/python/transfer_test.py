"""A paged KV cache sent from this process to a receiver in another one (tcp, and ucx when the
build has it), between different, scattered block ids on the two sides."""

import gc
import json
import os
import select
import subprocess
import sys
import tempfile
import threading
import unittest

import numpy
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kvtest  # noqa: E402
import kvwire  # noqa: E402

TIMEOUT_MS = 30000
LAYERS, KV_HEADS, HEAD_DIM, TOKENS, BLOCK = 3, 2, 32, 45, 16
SRC_BLOCKS, DST_BLOCKS = [7, 1, 4], [10, 3, 6]  # 45 tokens: 3 blocks, the last one partly used
CANARY = 3.5


def read_line(proc, timeout_s):
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    return proc.stdout.readline().strip() if ready else ""


class PagedTransfer(unittest.TestCase):
    def send_and_check(self, backend):
        tmp = tempfile.TemporaryDirectory(prefix="kvwire_py_transfer_")
        self.addCleanup(tmp.cleanup)
        key = os.urandom(32)
        key_file = os.path.join(tmp.name, "key")
        with open(key_file, "w") as f:
            f.write(key.hex())
        os.chmod(key_file, 0o600)
        cfg = {"backend": backend, "key_file": key_file, "out_dir": tmp.name, "num_blocks": 12,
               "block_size": BLOCK, "block_ids": DST_BLOCKS, "canary": CANARY}
        proc = subprocess.Popen([kvtest.PYTHON, os.path.join(os.path.dirname(__file__),
                                                             "transfer_peer.py"), json.dumps(cfg)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        address = read_line(proc, 30)
        self.assertTrue(address, "the receiver printed no address")

        torch.manual_seed(5)
        src = [torch.randn(2, 10, BLOCK, KV_HEADS, HEAD_DIM, dtype=torch.float16)
               for _ in range(LAYERS)]
        with kvwire.Sender.connect(address, backend=backend, key=key) as tx:
            req = tx.open(src, request_id=77, codec="fp16", block_ids=SRC_BLOCKS, tokens=TOKENS,
                          chunk_tokens=BLOCK, user_data=b"next-token:42")
            for layer in range(LAYERS):
                req.push_layer(layer)
            req.wait(timeout_ms=TIMEOUT_MS)
            self.assertTrue(req.poll())
            self.assertEqual(req.stats["chunks"], LAYERS * 2 * 3)
        _, err = proc.communicate(timeout=60)
        self.assertEqual(proc.returncode, 0, err)

        with open(os.path.join(tmp.name, "request.json")) as f:
            told = json.load(f)
        self.assertEqual(told["request_id"], 77)
        self.assertEqual(told["shape"], [LAYERS, 2, TOKENS, KV_HEADS, HEAD_DIM])
        self.assertEqual(told["dtype"], "float16")
        self.assertEqual(told["levels"], ["fp16"])
        self.assertEqual(bytes.fromhex(told["user_data"]), b"next-token:42")
        self.assertEqual(told["chunks"], LAYERS * 2 * 3)

        got = numpy.load(os.path.join(tmp.name, "received.npy"))  # (layers, 2, 12, BLOCK, h, d)
        written = numpy.zeros(got.shape, bool)
        for layer in range(LAYERS):
            s = src[layer].numpy()
            for t in range(TOKENS):
                d_block, s_block, slot = DST_BLOCKS[t // BLOCK], SRC_BLOCKS[t // BLOCK], t % BLOCK
                self.assertTrue(kvtest.same_bits(got[layer, :, d_block, slot], s[:, s_block, slot]),
                                f"layer {layer} token {t}")
                written[layer, :, d_block, slot] = True
        self.assertTrue((got[~written] == numpy.float16(CANARY)).all(), "a canary was overwritten")

    def test_tcp(self):
        self.send_and_check("tcp")

    def test_ucx(self):
        built = os.environ.get("KVWIRE_BUILT_BACKENDS", ",".join(kvwire.backends())).split(",")
        if "ucx" not in built:
            self.skipTest("SKIPPED: this build was configured without UCX")
        self.assertIn("ucx", kvwire.backends())
        self.send_and_check("ucx")


class Lifetimes(unittest.TestCase):
    """The bindings hold the tensors C++ reads or writes for as long as it may use them."""

    def test_references_held_until_done_or_released(self):
        key = os.urandom(32)
        kv = torch.randn(2, 2, 64, 2, 32, dtype=torch.float16)
        expected = kv.clone()
        with kvwire.Receiver.listen("127.0.0.1:0", key=key) as rx, \
                kvwire.Sender.connect(rx.address, key=key) as tx:
            req = tx.open(kv.clone(), request_id=5, codec="fp16")  # only the bindings hold it
            req.push_all()
            del req
            gc.collect()
            incoming = rx.next_request(timeout_ms=TIMEOUT_MS)
            self.assertEqual(incoming.shape, (2, 2, 64, 2, 32))
            dst = torch.zeros(incoming.shape, dtype=torch.float32)  # decoded as float32
            before = sys.getrefcount(dst)
            rx.set_destination(5, dst)
            self.assertEqual(sys.getrefcount(dst), before + 1)
            rx.wait(5, timeout_ms=TIMEOUT_MS)
            self.assertTrue(torch.equal(dst, expected.float()))
            rx.release(5)
            self.assertEqual(sys.getrefcount(dst), before)
            tx.close()
            tx.close()  # closing twice is harmless
            with self.assertRaises(kvwire.Error):
                tx.open(kv, request_id=6)
        with self.assertRaises(kvwire.Error):
            rx.next_request(timeout_ms=0)


class InProcess(unittest.TestCase):
    def test_fp16_chunks_are_read_straight_into_a_float16_array(self):
        key = os.urandom(32)
        kv = numpy.random.default_rng(3).standard_normal((2, 2, 64, 2, 16)).astype("float16")
        with kvwire.Receiver.listen(key=key) as rx, \
                kvwire.Sender.connect(rx.address, key=key) as tx:
            req = tx.open(kv, request_id=12, codec="fp16", chunk_tokens=32)
            incoming = rx.next_request(timeout_ms=TIMEOUT_MS)
            out = numpy.zeros(incoming.shape, "float16")
            rx.set_destination(12, out)
            req.push_all()
            rx.wait(12, timeout_ms=TIMEOUT_MS)
            req.wait(timeout_ms=TIMEOUT_MS)
            stats = rx.stats(12)
            self.assertEqual(stats["chunks"], 2 * 2 * 2)
            self.assertEqual(stats["landed_chunks"], stats["chunks"])
            self.assertTrue(numpy.array_equal(out, kv))

    def test_level_ladder(self):
        key = os.urandom(32)
        kv = numpy.random.default_rng(2).standard_normal((2, 2, 96, 2, 32)).astype("float32")
        levels = [kvwire.LevelSpec("fp16", bits_per_element=16.0), "q4_0"]
        with kvwire.Receiver.listen(key=key) as rx, \
                kvwire.Sender.connect(rx.address, key=key) as tx:
            req = tx.open(kv, request_id=9, levels=levels, chunk_tokens=32)
            req.push_all()
            incoming = rx.next_request(timeout_ms=TIMEOUT_MS)
            self.assertEqual(incoming.levels, ["fp16", "q4_0"])
            self.assertEqual(incoming.dtype, "float32")
            out = numpy.zeros(incoming.shape, "float32")
            rx.set_destination(9, out)
            for layer in range(2):
                rx.wait_layer(9, layer, timeout_ms=TIMEOUT_MS)
            rx.wait(9, timeout_ms=TIMEOUT_MS)
            req.wait(timeout_ms=TIMEOUT_MS)
            self.assertEqual(sum(req.stats["chunks_per_level"]), 2 * 2 * 3)
            self.assertEqual(rx.stats(9)["chunks"], 2 * 2 * 3)
            err = numpy.sqrt(((out - kv) ** 2).sum() / (kv ** 2).sum())
            self.assertLess(err, 0.2)
            with self.assertRaises(ValueError):
                tx.open(kv, request_id=10, codec="fp16", levels=["q4_0"])

    def test_blocking_calls_release_the_gil(self):
        ticks = []
        stop = threading.Event()

        def count():
            while not stop.is_set():
                ticks.append(1)

        with kvwire.Receiver.listen(insecure=True) as rx:
            t = threading.Thread(target=count)
            t.start()
            try:
                before = len(ticks)
                with self.assertRaises(kvwire.TimeoutError):
                    rx.next_request(timeout_ms=300)
                during = len(ticks) - before  # ~0 if the wait held the GIL
            finally:
                stop.set()
                t.join(timeout=10)
        self.assertGreater(during, 1000)


if __name__ == "__main__":
    unittest.main()
