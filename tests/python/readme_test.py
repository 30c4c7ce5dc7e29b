"""Runs the ```python blocks of README.md as they are written, so the examples a reader copies
work: the first (codecs) with a profile in KVWIRE_PROFILE, the next two (a decode node and a
prefill node) as two processes at once, over every backend this build has (BACKEND)."""

import os
import re
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kvtest  # noqa: E402

README = os.path.join(os.environ.get("KVWIRE_SOURCE_DIR",
                                     os.path.join(os.path.dirname(__file__), "..", "..")),
                      "README.md")
TIMEOUT_S = 120


def python_blocks():
    with open(README) as f:
        return re.findall(r"\n```python\n(.*?)\n```\n", f.read(), re.S)


class ReadmeSnippets(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="kvwire_py_readme_")
        cls.blocks = python_blocks()
        for i, block in enumerate(cls.blocks):
            with open(os.path.join(cls.tmp.name, f"block{i}.py"), "w") as f:
                f.write(block + "\n")

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def script(self, i):
        return os.path.join(self.tmp.name, f"block{i}.py")

    def test_three_blocks(self):
        self.assertEqual(len(self.blocks), 3, "README.md: expected the codec block, the decode "
                         "node and the prefill node")

    def test_codec_block_runs(self):
        # A profile for the block's shape: 6 layers, 2 kv heads, head_dim 64.
        profile = kvtest.calibrated_profile(self.tmp.name, 6, 2, 64)
        r = subprocess.run([kvtest.PYTHON, self.script(0)], cwd=self.tmp.name,
                           env=dict(os.environ, KVWIRE_PROFILE=profile), capture_output=True,
                           text=True, timeout=TIMEOUT_S)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def test_two_nodes_run_over_every_backend(self):
        backends = [b for b in os.environ.get("KVWIRE_BUILT_BACKENDS", "tcp").split(",")
                    if b in ("tcp", "ucx")]
        self.assertIn("tcp", backends)
        for backend in backends:
            with self.subTest(backend=backend):
                env = dict(os.environ, BACKEND=backend)
                # The prefill node may start first: a Sender keeps trying to connect within its
                # reconnect window (30 s).
                decode = subprocess.Popen([kvtest.PYTHON, self.script(1)], cwd=self.tmp.name,
                                          env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True)
                prefill = subprocess.Popen([kvtest.PYTHON, self.script(2)], cwd=self.tmp.name,
                                           env=env, stdout=subprocess.PIPE,
                                           stderr=subprocess.STDOUT, text=True)
                try:
                    out_p, _ = prefill.communicate(timeout=TIMEOUT_S)
                    out_d, _ = decode.communicate(timeout=TIMEOUT_S)
                finally:
                    for p in (prefill, decode):
                        if p.poll() is None:
                            p.kill()
                            p.wait()
                self.assertEqual(prefill.returncode, 0, "prefill node:\n" + out_p)
                self.assertEqual(decode.returncode, 0, "decode node:\n" + out_d)


if __name__ == "__main__":
    unittest.main()
