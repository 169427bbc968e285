"""
Tests for L{ekey.services.process}: the daemon's own hardening.
"""

import os
import resource

from twisted.trial import unittest

from ekey.services import process


class CoreDumpTests(unittest.TestCase):
    """
    The daemon writes no core file.
    """

    def test_disabled(self):
        """
        In a child process, L{process.disableCoreDumps} sets RLIMIT_CORE to
        zero and makes the process undumpable (on Linux).
        """
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                process.disableCoreDumps()
                dumpable = process._prctl(3)  # PR_GET_DUMPABLE
                ok = resource.getrlimit(resource.RLIMIT_CORE) == (0, 0) and dumpable in (0, None)
                os.write(write, b"1" if ok else b"0")
            finally:
                os._exit(0)
        os.close(write)
        result = os.read(read, 1)
        os.close(read)
        os.waitpid(pid, 0)
        self.assertEqual(result, b"1")


class CapabilityTests(unittest.TestCase):
    """
    Whether C{CAP_SYS_ADMIN} survives C{twistd --uid}.
    """

    def test_sameUID(self):
        """
        Switching to the uid the process already has keeps everything.
        """
        self.assertTrue(process.capabilitiesSurvive(os.geteuid()))

    def test_otherUID(self):
        """
        Switching from root to another uid drops capabilities unless the
        securebits keep them.
        """
        if os.geteuid() != 0:
            raise unittest.SkipTest("only root switches uid")
        bits = process._prctl(process._PR_GET_SECUREBITS)
        expected = bits is not None and bool(bits & process._SECBIT_NO_SETUID_FIXUP)
        self.assertEqual(process.capabilitiesSurvive(65534), expected)
