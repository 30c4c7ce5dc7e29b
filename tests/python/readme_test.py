"""Runs the ```python block of README.md as it is written, so the example a reader copies works."""

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


class ReadmeSnippet(unittest.TestCase):
    def test_python_block_runs(self):
        with open(README) as f:
            match = re.search(r"\n```python\n(.*?)\n```\n", f.read(), re.S)
        self.assertIsNotNone(match, "README.md has no ```python block")
        with tempfile.TemporaryDirectory(prefix="kvwire_py_readme_") as tmp:
            script = os.path.join(tmp, "readme_snippet.py")
            with open(script, "w") as f:
                f.write(match.group(1) + "\n")
            r = subprocess.run([kvtest.PYTHON, script], cwd=tmp, capture_output=True, text=True,
                               timeout=120)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)


if __name__ == "__main__":
    unittest.main()
