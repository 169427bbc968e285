"""
Operator conventions every command keeps: C{--version} prints
C{COMMAND VERSION} and exits 0, and the daemon's factories do not log
their start and stop (C{Starting factory <... object at 0x...>}).
"""

from __future__ import annotations

import contextlib
import io

from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import TestCase

from ekey import __version__


class VersionTests(TestCase):
    """
    C{--version} on each command this module owns prints the command's
    name and L{ekey.__version__} on standard output and exits 0.
    """

    def runVersion(self, main, *args, **kwargs):
        """
        Run C{main(["--version"])}, standard output captured.

        @return: C{(exit status, standard output)}; a return without
            C{SystemExit} counts as status 0.
        """
        out = io.StringIO()
        status = 0
        with contextlib.redirect_stdout(out):
            try:
                result = main(["--version"], *args, **kwargs)
            except SystemExit as e:
                status = e.code or 0
            else:
                if result is not None:
                    status = self.successResultOf(result)
        return status, out.getvalue()

    def test_ekeyctl(self):
        """
        C{ekeyctl --version} needs no verb and no daemon.
        """
        from ekey.cli import ekeyctl

        out = io.StringIO()
        d = ekeyctl.main(["--version"], reactor=Clock(), out=out, err=io.StringIO())
        self.assertEqual((self.successResultOf(d), out.getvalue()),
                         (0, f"ekeyctl {__version__}\n"))

    def test_ekeyctlWithoutReactor(self):
        """
        Run as the console script runs it, C{ekeyctl --version} exits 0
        without starting a reactor.
        """
        from ekey.cli import ekeyctl

        self.assertEqual(self.runVersion(ekeyctl.main),
                         (0, f"ekeyctl {__version__}\n"))

    def test_ekeySim(self):
        """
        C{ekey-sim --version} needs neither C{--listen} nor C{--pty}.
        """
        from ekey.cli import sim

        self.assertEqual(self.runVersion(sim.main, reactor=Clock()),
                         (0, f"ekey-sim {__version__}\n"))

    def test_ekeyRekey(self):
        """
        C{ekey-rekey --version} needs no key and asks for no master key.
        """
        from ekey.cli import rekey

        self.assertEqual(self.runVersion(rekey.main, reactor=Clock(),
                                         prompt=lambda: self.fail("prompted")),
                         (0, f"ekey-rekey {__version__}\n"))

    def test_ekeySetkey(self):
        """
        C{ekey-setkey --version} needs no PATH and asks for no master key.
        """
        from ekey.cli import setkey

        self.assertEqual(self.runVersion(setkey.main, reactor=Clock(),
                                         prompt=lambda: self.fail("prompted")),
                         (0, f"ekey-setkey {__version__}\n"))

    def test_certs(self):
        """
        C{python3 -m ekey.cli.certs --version} needs no verb and writes
        nothing.
        """
        from ekey.cli import certs

        self.assertEqual(self.runVersion(certs.main),
                         (0, f"python3 -m ekey.cli.certs {__version__}\n"))

    def test_convert(self):
        """
        C{ekey-convert-ekeyd-conf --version} reads no file.
        """
        from ekey.cli import convert

        out = io.StringIO()
        status = convert.main(["--version"], out=out, err=io.StringIO())
        self.assertEqual((status, out.getvalue()),
                         (0, f"ekey-convert-ekeyd-conf {__version__}\n"))


class FactoryNoiseTests(TestCase):
    """
    The daemon's listening and connecting factories start and stop without
    a log line (Twisted's C{Starting factory <... at 0x...>} says nothing an
    operator can use); the daemon logs its listeners itself.
    """

    def assertQuiet(self, factory):
        """
        Starting and stopping C{factory} logs nothing about a factory.
        """
        with capturedLogs() as events:
            factory.doStart()
            factory.doStop()
        lines = [e.get("log_format", "") for e in events]
        self.assertEqual([l for l in lines if "factory" in l.lower()], [])

    def test_egdServerFactory(self):
        """
        The EGD server factory logs nothing when a port starts and stops it.
        """
        from ekey.core.pool import EntropyPool
        from ekey.services.server import EGDServerFactory

        self.assertQuiet(EGDServerFactory(EntropyPool(1024), clock=Clock()))

    def test_upstreamFactory(self):
        """
        An upstream's factory logs nothing at each (re)connection.
        """
        from ekey.core.pool import EntropyPool
        from ekey.core.pull import PullPolicy
        from ekey.services.upstream import Upstream

        policy = PullPolicy(EntropyPool(1024), 256, 512, clock=Clock())
        self.assertQuiet(Upstream("tcp:127.0.0.1:8888", policy))
