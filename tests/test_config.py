"""
Tests for L{ekey.services.config}: the daemon's typed configuration, its
checks from values alone, and the trust rules it carries (which sources
are verified, what the kernel is credited, private Unix listeners).
"""

from twisted.trial import unittest

from ekey.core.kernel import DEFAULT_SHANNONS_PER_BYTE
from ekey.core.pull import DEFAULT_HIGH_WATER
from ekey.services.config import (
    DaemonConfig,
    isVerifiedSource,
    privateUnixListener,
    splitDescription,
    unixPath,
)


class CheckTests(unittest.TestCase):
    """
    L{DaemonConfig.check} refuses bad values in one line naming the option.
    """

    def assertRefused(self, expected, **fields):
        error = self.assertRaises(ValueError, DaemonConfig(**fields).check)
        self.assertIn(expected, str(error))
        self.assertNotIn("\n", str(error))

    def test_good(self):
        """
        A key and a port pass.
        """
        DaemonConfig(devices=("/dev/key",), ports=("tcp:8888",)).check()

    def test_refusals(self):
        """
        Each bad value is named with its option.
        """
        key = {"devices": ("/dev/key",), "ports": ("tcp:8888",)}
        self.assertRefused("at least one source", ports=("tcp:8888",))
        self.assertRefused("nothing to do", devices=("/dev/key",))
        self.assertRefused("more than once", devices=("/k", "/k"), ports=("tcp:1",))
        self.assertRefused("--port tcp:1 is given more than once", devices=("/k",),
                           ports=("tcp:1", "tcp:1"))
        self.assertRefused("--pool-size", poolSize=0, **key)
        self.assertRefused("--client-rate cannot be negative", clientRate=-1, **key)
        self.assertRefused("--idle-timeout cannot be negative", idleTimeout=-1, **key)
        self.assertRefused("--max-pending", maxPending=10, **key)
        self.assertRefused("--max-connections", maxConnections=0, **key)
        self.assertRefused("--output-max-bytes", outputMaxBytes=0, **key)
        self.assertRefused("--tls-handshake-timeout", tlsHandshakeTimeout=0, **key)
        self.assertRefused("--upstream-stall-timeout", upstreamStallTimeout=-1, **key)
        self.assertRefused("--log-level", logLevel="loud", **key)
        self.assertRefused("--shannons-per-byte", shannonsPerByte=9, **key)
        self.assertRefused("--low-water", upstreams=("unix:/u",), lowWater=10, highWater=5,
                           ports=("tcp:1",))

    def test_defaultHighWater(self):
        """
        Without C{highWater} the high watermark is L{DEFAULT_HIGH_WATER}, or
        the pool size when that is smaller, so that C{--pool-size} alone is
        a whole configuration; a given one is used as it is, and checked.
        """
        relay = {"upstreams": ("unix:/u",), "ports": ("tcp:1",)}
        self.assertEqual(DaemonConfig(**relay).pullHighWater, DEFAULT_HIGH_WATER)
        self.assertEqual(DEFAULT_HIGH_WATER, 512 * 1024)
        small = DaemonConfig(poolSize=300000, **relay)
        self.assertEqual(small.pullHighWater, 300000)
        small.check()
        self.assertEqual(DaemonConfig(poolSize=300000, highWater=4096, **relay).pullHighWater,
                         4096)
        self.assertRefused("--high-water (600000) <= --pool-size (300000)", poolSize=300000,
                           highWater=600000, **relay)
        self.assertRefused("--low-water (65536) < --high-water (65536)", poolSize=65536, **relay)

    def test_kernelWithUID(self):
        """
        --kernel with twistd --uid is refused, pointing at the
        capability-based unit, unless the capability survives the switch.
        """
        self.assertRefused("examples/systemd/ekey-feed-kernel.service", devices=("/k",),
                           kernel=True, switchUID=1000)
        DaemonConfig(devices=("/k",), kernel=True, switchUID=1000,
                     keepsCapabilities=True).check()
        DaemonConfig(devices=("/k",), ports=("tcp:1",), switchUID=1000).check()

    def test_frozen(self):
        """
        A configuration cannot change once made.
        """
        config = DaemonConfig()
        self.assertRaises(AttributeError, setattr, config, "poolSize", 1)

    def test_defaults(self):
        """
        The options other parts wire later have their defaults.
        """
        config = DaemonConfig()
        self.assertEqual(config.tlsHandshakeTimeout, 10)
        self.assertIsNone(config.controlGroup)
        self.assertEqual(config.deviceDirs, ())
        self.assertEqual(config.outputMaxBytes, 1 << 20)
        self.assertEqual(config.logLevel, "info")


class DefaultSourcesTests(unittest.TestCase):
    """
    L{DaemonConfig.withDefaultSources} gives a configuration with no
    source ekeyd's stock key directories.
    """

    def test_noSource(self):
        """
        With no source, the directories of L{DEFAULT_DEVICE_DIRS} (read when
        called) are used and the configuration says they are the default.
        """
        from ekey.services import config as module

        self.assertEqual(module.DEFAULT_DEVICE_DIRS, ("/dev/entropykey", "/var/run/entropykeys"))
        self.patch(module, "DEFAULT_DEVICE_DIRS", ("/a", "/b"))
        config = DaemonConfig(ports=("tcp:8888",)).withDefaultSources()
        self.assertEqual((config.deviceDirs, config.defaultSources), (("/a", "/b"), True))
        self.assertEqual(config.ports, ("tcp:8888",))
        config.check()

    def test_sourceGiven(self):
        """
        A key, a key directory or an upstream is a source: the
        configuration is left as it is.
        """
        for fields in ({"devices": ("/k",)}, {"deviceDirs": ("/d",)},
                       {"upstreams": ("unix:/u",)}):
            config = DaemonConfig(ports=("tcp:1",), **fields)
            self.assertIs(config.withDefaultSources(), config)
            self.assertFalse(config.defaultSources)


class TrustTests(unittest.TestCase):
    """
    Only verified sources are credited to the kernel by default.
    """

    def test_verified(self):
        """
        Unix sockets, tls: and loopback tcp: are verified; other tcp:,
        ssl: and unknown types are not.
        """
        for description in ["unix:/run/ekey/egd", "tls:relay.example:8888:trustRoots=/x",
                            "tcp:127.0.0.1:8888", "tcp:localhost:8888", "tcp:127.1.2.3:1",
                            "tcp:host=127.0.0.1:port=8888", r"tcp6:\:\:1:8888"]:
            self.assertTrue(isVerifiedSource(description), description)
        for description in ["tcp:10.0.0.1:8888", "tcp:relay.example:8888",
                            "ssl:127.0.0.1:8888", "tcp:host=192.0.2.1:port=1", "tcp:"]:
            self.assertFalse(isVerifiedSource(description), description)

    def test_credit(self):
        """
        Keys and verified upstreams get the default credit; an unverified
        upstream makes the default 0, naming it; an explicit value always
        wins.
        """
        verified = DaemonConfig(devices=("/k",), upstreams=("unix:/u", "tcp:127.0.0.1:1"))
        self.assertEqual(verified.kernelCredit()[0], DEFAULT_SHANNONS_PER_BYTE)
        remote = DaemonConfig(upstreams=("tcp:192.0.2.1:8888",))
        credit, reason = remote.kernelCredit()
        self.assertEqual(credit, 0)
        self.assertIn("tcp:192.0.2.1:8888", reason)
        self.assertIn("--shannons-per-byte", reason)
        explicit = DaemonConfig(upstreams=("tcp:192.0.2.1:8888",), shannonsPerByte=5)
        self.assertEqual(explicit.kernelCredit()[0], 5)


class DescriptionTests(unittest.TestCase):
    """
    Endpoint descriptions are read as Twisted reads them.
    """

    def test_split(self):
        """
        Colons split, backslashes escape, name=value is a keyword.
        """
        self.assertEqual(splitDescription(r"unix:/a\:b:mode=600"),
                         ("unix", ["/a:b"], {"mode": "600"}))

    def test_privateUnix(self):
        """
        A unix: listener without a mode gets mode 600; one with a mode, and
        any other type, is left alone.
        """
        self.assertEqual(privateUnixListener("unix:/run/egd"), "unix:/run/egd:mode=600")
        self.assertEqual(privateUnixListener("unix:/run/egd:mode=660"), "unix:/run/egd:mode=660")
        self.assertEqual(privateUnixListener("tcp:8888"), "tcp:8888")

    def test_unixPath(self):
        """
        The path of a unix: description, positional or keyword.
        """
        self.assertEqual(unixPath("unix:/run/egd:mode=600"), "/run/egd")
        self.assertEqual(unixPath("unix:address=/run/egd"), "/run/egd")
        self.assertIsNone(unixPath("tcp:8888"))
