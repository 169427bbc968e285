"""
The benchmarks are not tests, but they must run: each one compiles and
answers C{--help} (which parses its options and imports what it needs).
"""

import os
import subprocess
import sys

from twisted.trial import unittest

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "benchmarks")


def scripts():
    return sorted(name for name in os.listdir(BENCHMARKS)
                  if name.startswith("bench_") and name.endswith(".py"))


class BenchmarkScriptTests(unittest.TestCase):
    """
    Every C{benchmarks/bench_*.py}.
    """

    def test_found(self):
        """
        The five benchmarks are there.
        """
        self.assertEqual(scripts(), ["bench_egd.py", "bench_frames.py", "bench_hardening.py",
                                     "bench_health.py", "bench_relay.py"])

    def test_help(self):
        """
        Each answers C{--help} and exits 0.
        """
        for name in scripts():
            result = subprocess.run([sys.executable, os.path.join(BENCHMARKS, name), "--help"],
                                    capture_output=True, text=True, timeout=60)
            self.assertEqual(result.returncode, 0, f"{name}: {result.stderr}")
            self.assertIn("usage", result.stdout.lower(), name)
