"""kvwire.vllm between two processes: this one is the decode engine, vllm_harness.py the prefill
engine; both drive the connector as vLLM does, on paged CPU caches with their own scattered block
ids. Every backend this build has is exercised (KVWIRE_BUILT_BACKENDS)."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import types
import unittest

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kvtest  # noqa: E402
import kvwire  # noqa: E402
import kvwire.vllm  # noqa: E402
import vllm_harness as h  # noqa: E402

CANARY, PREFIX = 3.5, -1.25  # never-written blocks; the prefix the decode side holds already
BUILT = os.environ.get("KVWIRE_BUILT_BACKENDS", ",".join(kvwire.backends())).split(",")
BACKENDS = [b for b in ("tcp", "ucx") if b in BUILT]


def bits(t):
    return t.contiguous().view(torch.int16)


class Harness(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="kvwire_py_vllm_")
        d = cls.tmp.name
        cls.key_file = os.path.join(d, "key")
        cls.wrong_key_file = os.path.join(d, "wrong_key")
        for path in (cls.key_file, cls.wrong_key_file):
            with open(path, "w") as f:
                f.write(os.urandom(32).hex())
            os.chmod(path, 0o600)
        cls.profile_path = kvtest.calibrated_profile(d, h.LAYERS, h.HEADS, h.DIM)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def start_prefill(self, cfg):
        proc = subprocess.Popen([kvtest.PYTHON, os.path.join(os.path.dirname(__file__),
                                                             "vllm_harness.py"), json.dumps(cfg)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        self.addCleanup(lambda: (proc.stdout.close(), proc.stderr.close(), proc.stdin.close()))
        proc.lines = h.LineReader(proc.stdout)
        self.assertEqual(proc.lines.read_line(60), "ready", "the prefill engine did not start")
        return proc

    def wait_line(self, proc, prefix, timeout_s=60):
        """The first stdout line of the prefill engine that starts with prefix."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = proc.lines.read_line(max(0.0, deadline - time.monotonic()))
            if line.startswith(prefix):
                return line
            if not line and (proc.lines.eof or proc.poll() is not None):
                break
        proc.kill()
        proc.wait(timeout=30)
        self.fail(f"no '{prefix}' line from the prefill engine: {proc.stderr.read()[-2000:]}")

    def decode_engine(self, backend, layout, order, dtype, extra):
        extra = dict({"backend": backend, "key_file": self.key_file, "timeout_ms": 30000}, **extra)
        cfg = h.vllm_config("kv_consumer", extra)
        sched = kvwire.vllm.KvwireConnector(cfg, "SCHEDULER")
        worker = kvwire.vllm.KvwireConnector(cfg, "WORKER")
        self.addCleanup(worker.shutdown)
        return sched, worker

    def transfer(self, backend, src, dst, dtype, codec="fp16", load_async=False,
                 wait_for_layer0=False, seed=1, prefill_key=None, prefill_extra=None,
                 decode_extra=None):
        """Sends 32 requests from a prefill engine (layout/order `src`) to this decode engine
        (`dst`). Returns (requests, decode caches, expected caches, block ids, prefill result,
        layer timeline, decode worker)."""
        requests = h.make_requests(32, seed)
        if not load_async:
            # vLLM computes the last prompt token on the decode side when it loads layer by
            # layer, so a prompt the decode side holds all but one token of has nothing to load.
            for r in requests:
                r["prompt"] = max(r["prompt"], r["cached"] + 2)
        extra = {"codec": codec, "load_async": load_async}
        if codec.startswith("fraqtl"):
            extra["profile"] = self.profile_path
        extra.update(decode_extra or {})
        sched, worker = self.decode_engine(backend, *dst, dtype, extra)
        num_blocks = h.blocks_needed(requests) + 40
        caches = h.make_cache(dst[0], dst[1], num_blocks, dtype, CANARY)
        worker.register_kv_caches(caches)
        names = list(caches)
        blocks = h.allocate(requests, num_blocks, seed + 7)  # other ids than the prefill side's
        for r in requests:
            fill = torch.full((2, r["cached"], h.HEADS, h.DIM), PREFIX, dtype=h.DTYPES[dtype])
            for name in names:
                h.write_tokens(caches[name], dst[0], blocks[r["id"]], 0, r["cached"], fill)
        expected = {name: c.clone() for name, c in caches.items()}

        pextra = dict(extra, backend=backend, key_file=prefill_key or self.key_file)
        pextra.update(prefill_extra or {})
        proc = self.start_prefill({
            "requests": requests, "extra": pextra, "peer_address": worker.listen_address,
            "layout": src[0], "order": src[1], "dtype": dtype, "seed": seed,
            "wait_for_layer0": wait_for_layer0, "hang_after_layer": None})

        # Scheduler step: every request hits its local prefix, the rest comes from the prefill.
        for r in requests:
            req = h.Request(r["id"], r["prompt"],
                            {"do_remote_prefill": True, "transfer_id": r["tid"]})
            n, is_async = sched.get_num_new_matched_tokens(req, r["cached"])
            self.assertEqual((n, is_async),
                             (r["prompt"] - r["cached"] - (0 if load_async else 1), load_async))
            sched.update_state_after_alloc(req, h.Blocks(blocks[r["id"]]), n)
        meta = sched.build_connector_meta(types.SimpleNamespace(num_scheduled_tokens={}))
        self.assertEqual(len(meta.reqs_to_recv), len(requests))

        timeline = {}
        worker.bind_connector_metadata(meta)
        worker.start_load_kv(None)
        if not load_async:
            for layer, name in enumerate(names):
                worker.wait_for_layer_load(name)
                timeline[layer] = time.monotonic()
                if layer == 0 and wait_for_layer0:
                    proc.stdin.write("layer0\n")
                    proc.stdin.flush()
                worker.save_kv_layer(name, caches[name], None)  # nothing to save on this side
            worker.wait_for_save()
            self.assertEqual(worker.get_block_ids_with_load_errors(), set())
        worker.clear_connector_metadata()
        received = self.drain(worker, {r["id"] for r in requests} if load_async else set(), 60)
        result = json.loads(self.wait_line(proc, "done ")[5:])
        self.assertEqual(proc.wait(timeout=30), 0, proc.stderr.read()[-2000:])
        return requests, caches, expected, blocks, result, timeline, worker, received

    def drain(self, worker, ids, timeout_s):
        """Steps (empty metadata) until get_finished has reported every id in ids as received;
        returns what it reported, and the load errors seen meanwhile."""
        received, errors = set(), set()
        deadline = time.monotonic() + timeout_s
        while True:
            worker.bind_connector_metadata(kvwire.vllm.KvwireConnectorMetadata())
            worker.start_load_kv(None)
            worker.wait_for_save()
            _, recving = worker.get_finished(set())
            errors |= worker.get_block_ids_with_load_errors()
            worker.clear_connector_metadata()
            received |= recving or set()
            if received >= ids or time.monotonic() > deadline:
                return received, errors
            time.sleep(0.01)  # the step loop's pace

    @staticmethod
    def local_codec(r, dtype, codec, profile):
        """The request's transferred tokens through kvwire.encode / decode in this process."""
        tail = h.source_kv(r, dtype)[:, :, r["cached"]:]
        out = torch.empty(tuple(tail.shape), dtype=tail.dtype)
        stream = kvwire.encode(tail, codec=codec, profile=profile, token_begin=r["cached"])
        return kvwire.decode(stream, out=out, profile=profile)

    def expect_received(self, requests, caches, expected, blocks, layout, dtype, reference):
        """Every transferred token equals `reference(r)` ((layers, 2, tokens, heads, dim) of the
        tail); every other slot of every block holds what it held before."""
        names = list(caches)
        for r in requests:
            tail = reference(r)
            for layer, name in enumerate(names):
                h.write_tokens(expected[name], layout, blocks[r["id"]], r["cached"], r["prompt"],
                               tail[layer])
        for name in names:
            self.assertTrue(torch.equal(bits(caches[name]), bits(expected[name])),
                            f"{name}: a block differs from the source or a canary was overwritten")

    # ------------------------------------------------------------------------------------------

    def check_fp16_sync_with_overlap(self, backend):
        dst = ("flash_attn", "HND")
        requests, caches, expected, blocks, result, timeline, _, _ = self.transfer(
            backend, src=("flash_attn", "NHD"), dst=dst, dtype="float16", wait_for_layer0=True)
        self.assertEqual(result["unfinished"], [])
        self.assertEqual(result["failed"], {})
        self.expect_received(requests, caches, expected, blocks, dst[0], "float16",
                             lambda r: h.source_kv(r, "float16")[:, :, r["cached"]:])
        # Layer 0 was usable before the prefill side even pushed the last layer.
        self.assertLess(timeline[0], result["pushed_last_at"])
        self.assertGreaterEqual(timeline[h.LAYERS - 1], result["pushed_last_at"])
        for r in requests:
            p = result["params"][r["id"]]
            self.assertEqual((p["transfer_id"], p["remote_cached_tokens"]), (r["tid"], r["cached"]))

    def check_bf16_async(self, backend):
        dst = ("flashinfer", "NHD")
        requests, caches, expected, blocks, result, _, _, (received, errors) = self.transfer(
            backend, src=("flash_attn", "HND"), dst=dst, dtype="bfloat16", load_async=True,
            seed=2)
        self.assertEqual(received, {r["id"] for r in requests})
        self.assertEqual(errors, set())
        self.assertEqual(result["failed"], {})
        # The fp16 level carries bfloat16 through float16 (exact but for magnitudes below
        # float16's normal range): the reference is kvwire's own codec, run locally.
        self.expect_received(requests, caches, expected, blocks, dst[0], "bfloat16",
                             lambda r: self.local_codec(r, "bfloat16", "fp16", None))

    def check_fraqtl_matches_local_codec(self, backend):
        dst = ("flash_attn", "NHD")
        requests, caches, expected, blocks, result, _, _, _ = self.transfer(
            backend, src=("flashinfer", "HND"), dst=dst, dtype="float16", codec="fraqtl@2",
            seed=3)
        self.assertEqual(result["failed"], {})
        profile = kvwire.Profile.load(self.profile_path)
        self.expect_received(requests, caches, expected, blocks, dst[0], "float16",
                             lambda r: self.local_codec(r, "float16", "fraqtl@2", profile))
        # Lossy: the local codec is not the identity on this data.
        r = max(requests, key=lambda r: r["prompt"])
        self.assertFalse(torch.equal(self.local_codec(r, "float16", "fraqtl@2", profile),
                                     h.source_kv(r, "float16")[:, :, r["cached"]:]))

    def check_prefill_killed(self, backend):
        requests = h.make_requests(32, 4)
        stall_ms = 2000
        sched, worker = self.decode_engine(backend, "flash_attn", "NHD", "float16",
                                           {"load_async": True, "stall_timeout_ms": stall_ms})
        num_blocks = h.blocks_needed(requests) + 40
        caches = h.make_cache("flash_attn", "NHD", num_blocks, "float16", CANARY)
        worker.register_kv_caches(caches)
        blocks = h.allocate(requests, num_blocks, 11)
        proc = self.start_prefill({
            "requests": requests, "extra": {"backend": backend, "key_file": self.key_file,
                                            "codec": "fp16"},
            "peer_address": worker.listen_address, "layout": "flash_attn", "order": "HND",
            "dtype": "float16", "seed": 4, "hang_after_layer": 1})
        for r in requests:
            req = h.Request(r["id"], r["prompt"],
                            {"do_remote_prefill": True, "transfer_id": r["tid"]})
            n, _ = sched.get_num_new_matched_tokens(req, r["cached"])
            sched.update_state_after_alloc(req, h.Blocks(blocks[r["id"]]), n)
        worker.bind_connector_metadata(sched.build_connector_meta(types.SimpleNamespace()))
        worker.start_load_kv(None)
        worker.clear_connector_metadata()
        self.wait_line(proc, "pushed 1 ")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        killed_at = time.monotonic()
        received, errors = self.drain(worker, {r["id"] for r in requests}, 30)
        self.assertEqual(received, {r["id"] for r in requests}, "a request was never reported")
        self.assertLess(time.monotonic() - killed_at, stall_ms / 1000 + 10)
        tails = set()
        for r in requests:
            ids = blocks[r["id"]]
            tails |= set(ids[r["cached"] // h.BLOCK:])
        self.assertEqual(errors, tails)

    def check_wrong_key_refused(self, backend):
        requests, caches, expected, _, result, _, _, (received, errors) = self.transfer(
            backend, src=("flash_attn", "NHD"), dst=("flash_attn", "NHD"), dtype="float16",
            load_async=True, seed=5, prefill_key=self.wrong_key_file,
            decode_extra={"timeout_ms": 2000})
        self.assertEqual(result["unfinished"], [])
        self.assertEqual(sorted(result["failed"]), sorted(r["id"] for r in requests))
        self.assertEqual(received, {r["id"] for r in requests})
        self.assertEqual(len(errors), sum(len(range(r["cached"], r["prompt"], h.BLOCK))
                                          for r in requests))
        for name in caches:  # nothing was written
            self.assertTrue(torch.equal(bits(caches[name]), bits(expected[name])))


def _add_backend_tests():
    for backend in ("tcp", "ucx"):
        for check in ("fp16_sync_with_overlap", "bf16_async", "fraqtl_matches_local_codec",
                      "prefill_killed", "wrong_key_refused"):
            def test(self, backend=backend, check=check):
                if backend not in BUILT:
                    self.skipTest(f"SKIPPED: this build was configured without {backend}")
                self.assertIn(backend, kvwire.backends())
                getattr(self, "check_" + check)(backend)
            setattr(Harness, f"test_{backend}_{check}", test)


_add_backend_tests()

if __name__ == "__main__":
    unittest.main()
