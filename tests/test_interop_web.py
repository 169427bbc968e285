"""
The daemon's metrics and status page (C{twistd ekey --metrics}) end to
end: a real daemon on simulated keys (C{ekey-sim}), scraped over HTTP and
parsed with C{prometheus_client}'s parser, and its page rendered by a real
headless browser (Debian's C{chromium}).

Keys that misbehave are simulated with C{ekey-sim --fault}: one reports
fail mode 9 (FIPS 140-2 threshold exceeded) and stops itself, one's
generator gets stuck and fails the host's health tests.
"""

from __future__ import annotations

import os
import shutil
import signal
import ssl
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import Dict, List, Optional, Tuple

from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import FailTest, TestCase

from tests.interop.egdsockets import EGDSocket
from tests.interop.processes import (
    SERIAL,
    assertNoTraceback,
    daemonLog,
    freeTCPPort,
    makeTempDir,
    socketPath,
    startDaemon,
    startSimulator,
    waitFor,
    waitForListeningTCP,
    writeKeyring,
)
from tests.interop.tlspeers import (
    mtlsServerEndpoint,
    writeCertificateAuthority,
    writeHostCertificate,
)
from tests.interop.requirements import findPeer

#: Serials of the simulated keys that misbehave (16 base64 characters).
FAIL_MODE_SERIAL = "FailMode9AAAAAAA"
STUCK_SERIAL = "StuckGenAAAAAAAA"

#: The entropy frame at which the faults happen.
FAULT_FRAME = 5

#: Seconds to wait for the daemon to see keys in a state.
KEY_TIMEOUT = 30.0

#: Seconds chromium may take (it can take 10 s or more on a small machine).
BROWSER_TIMEOUT = 60.0

CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser")


def fetch(url: str, timeout: float = 10.0,
          context: Optional[ssl.SSLContext] = None) -> Tuple[int, Dict[str, str], bytes]:
    """
    @param context: the TLS context for an C{https:} URL.
    @return: the status, headers (lower-case names) and body of a GET.
    """
    with urllib.request.urlopen(url, timeout=timeout, context=context) as response:
        headers = {name.lower(): value for name, value in response.getheaders()}
        return response.status, headers, response.read()


def parseMetrics(text: str) -> List[Tuple[str, Dict[str, str], float]]:
    """
    @return: every sample as C{(name, labels, value)}.
    """
    return [(sample.name, sample.labels, sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples]


def values(samples, name: str, **labels) -> List[float]:
    """
    @return: the values of the samples called C{name} whose labels include
        C{labels}.
    """
    return [value for sampleName, sampleLabels, value in samples
            if sampleName == name and all(sampleLabels.get(k) == v for k, v in labels.items())]


def total(samples, name: str, **labels) -> float:
    """
    @return: the sum of L{values}.
    """
    return sum(values(samples, name, **labels))


def findChromium() -> str:
    """
    @return: the path of Debian's chromium.
    @raise SkipTest: if it is not installed (L{findPeer}; or fail, when
        interop is required).
    """
    for path in CHROMIUM_PATHS:
        if os.access(path, os.X_OK):
            return path
    return findPeer("chromium", "chromium")


def runChromium(testCase, chromium: str, arguments: List[str], directory: str,
                timeout: float = BROWSER_TIMEOUT) -> Tuple[int, bytes, str]:
    """
    Run headless chromium once, with a fresh profile, no network use of
    its own, and a time limit; whatever it started is killed afterwards
    (its own process group, by id).

    @return: its exit status, standard output and standard error.
    @raise FailTest: if it is still running after C{timeout} seconds.
    """
    profile = tempfile.mkdtemp(prefix="ekey-chromium-")
    testCase.addCleanup(shutil.rmtree, profile, True)
    argv = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-breakpad",
            "--disable-dev-shm-usage", "--mute-audio", f"--user-data-dir={profile}",
            ] + arguments
    stdoutPath = os.path.join(directory, "chromium.stdout")
    stderrPath = os.path.join(directory, "chromium.stderr")
    env = dict(os.environ, HOME=profile)
    with open(stdoutPath, "wb") as stdout, open(stderrPath, "wb") as stderr:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout,
                                   stderr=stderr, env=env, cwd=directory,
                                   start_new_session=True)

    def killGroup():
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            pass

    testCase.addCleanup(killGroup)
    started = time.monotonic()
    try:
        status = process.wait(timeout)
    except subprocess.TimeoutExpired:
        killGroup()
        with open(stderrPath, "rb") as f:
            tail = f.read()[-3000:].decode("utf-8", "replace")
        raise FailTest(f"chromium still running after {timeout:g} s: {' '.join(argv)}\n"
                       f"{tail}") from None
    # The browser's helpers may outlive it for a moment.
    killGroup()
    with open(stdoutPath, "rb") as f:
        output = f.read()
    with open(stderrPath, "rb") as f:
        errors = f.read().decode("utf-8", "replace")
    testCase.chromiumSeconds = getattr(testCase, "chromiumSeconds", 0) + (
        time.monotonic() - started)
    return status, output, errors


def pngSize(data: bytes) -> Optional[Tuple[int, int]]:
    """
    @return: a PNG's width and height, or C{None} if C{data} is no PNG.
    """
    if len(data) < 24 or not data.startswith(b"\x89PNG\r\n\x1a\n") or data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


class _WebInteropMixin:
    """
    Start simulated keys and a daemon serving EGD and metrics on loopback.
    """

    def setUp(self):
        self.directory = makeTempDir(self)
        self.keyring = writeKeyring(
            os.path.join(self.directory, "keyring"),
            [(SERIAL, None), (FAIL_MODE_SERIAL, None), (STUCK_SERIAL, None)])

    def startKeys(self, faulty: bool) -> Dict[str, str]:
        """
        Start a well simulated key and, if C{faulty}, the two that
        misbehave.

        @return: each key's socket path by serial.
        """
        keys = {SERIAL: ()}
        if faulty:
            keys[FAIL_MODE_SERIAL] = (f"fail-mode:9@{FAULT_FRAME}",)
            keys[STUCK_SERIAL] = (f"stuck:{FAULT_FRAME}",)
        paths = {}
        for n, (serial, faults) in enumerate(keys.items()):
            path = socketPath(self, self.directory, f"key{n}.sock")
            startSimulator(self, self.directory, listen=path, serial=serial, faults=faults,
                           name=f"ekey-sim-{n}")
            paths[serial] = path
        return paths

    def startDaemon(self, paths: Dict[str, str], metrics=None):
        """
        Start the daemon on the keys, with EGD and metrics on loopback
        ports, and wait until both listen.

        @param metrics: makes the metrics endpoint from its port (default
            plain TCP on loopback).
        """
        self.egdPort = freeTCPPort()
        self.metricsPort = freeTCPPort()
        while self.metricsPort == self.egdPort:
            self.metricsPort = freeTCPPort()
        metrics = metrics or (lambda port: f"tcp:{port}:interface=127.0.0.1")
        self.daemon = startDaemon(
            self, self.directory, list(paths.values()), self.keyring, None,
            extra=["--port", f"tcp:{self.egdPort}:interface=127.0.0.1",
                   "--metrics", metrics(self.metricsPort),
                   "--control", "none", "--pool-size", "65536"])
        waitForListeningTCP(self.egdPort, process=self.daemon)
        waitForListeningTCP(self.metricsPort, process=self.daemon)
        self.baseURL = f"http://127.0.0.1:{self.metricsPort}/"

    def scrape(self):
        """
        @return: the samples of one scrape of C{/metrics}.
        """
        status, headers, body = fetch(self.baseURL + "metrics")
        self.assertEqual(status, 200)
        self.assertTrue(headers["content-type"].startswith("text/plain; version="),
                        headers["content-type"])
        return parseMetrics(body.decode("utf-8"))

    def waitForStates(self, states: Dict[str, str]):
        """
        Wait until every key (by serial) is in its state (by metric name)
        according to the metrics.

        @return: the samples of the scrape that showed it.
        """
        def reached():
            samples = self.scrape()
            for serial, state in states.items():
                if values(samples, "ekey_key_state", serial=serial, state=state) != [1]:
                    return None
            return samples

        try:
            return waitFor(reached, KEY_TIMEOUT, f"keys in states {states}", self.daemon)
        except FailTest as e:
            raise FailTest(f"{e}\nlast scrape:\n{fetch(self.baseURL + 'metrics')[2].decode()}"
                           f"\n{self.daemon.describe()}") from None

    def tearDown(self):
        daemon = getattr(self, "daemon", None)
        if daemon is not None:
            assertNoTraceback(self, daemonLog(daemon))


class MetricsInteropTests(_WebInteropMixin, TestCase):
    """
    Prometheus metrics from a running daemon, over real HTTP.
    """

    def test_countersMoveWithTraffic(self):
        """
        Two scrapes with EGD traffic between them: the bytes served, the
        pool's bytes out and the requests by command have moved by what
        the client took, and the key is running.
        """
        self.startDaemon(self.startKeys(faulty=False))
        first = self.waitForStates({SERIAL: "running"})
        self.assertEqual(values(first, "ekey_key_up", serial=SERIAL), [1])
        self.assertTrue(values(first, "ekey_key_temperature_kelvin", serial=SERIAL))
        self.assertTrue(values(first, "ekey_key_voltage_volts", serial=SERIAL))
        with EGDSocket("127.0.0.1", self.egdPort) as client:
            client.send(b"\x00")
            client.recvExactly(4, "the level")
            client.send(b"\x02\x40")
            self.assertEqual(len(client.recvExactly(64, "a blocking read")), 64)
            second = self.scrape()
            self.assertEqual(total(second, "ekey_egd_clients"), 1)
        for name, command in (("ekey_egd_requests_total", "GetLevel"),
                              ("ekey_egd_requests_total", "ReadBlocking")):
            self.assertEqual(total(second, name, command=command)
                             - total(first, name, command=command), 1, command)
        self.assertEqual(total(second, "ekey_egd_served_bytes_total")
                         - total(first, "ekey_egd_served_bytes_total"), 64)
        self.assertGreaterEqual(total(second, "ekey_pool_out_bytes_total")
                                - total(first, "ekey_pool_out_bytes_total"), 64)
        self.assertGreaterEqual(total(second, "ekey_pool_in_bytes_total"),
                                total(first, "ekey_pool_in_bytes_total"))
        self.assertGreater(total(second, "ekey_key_entropy_bytes_total", serial=SERIAL), 0)
        self.assertEqual(total(second, "ekey_egd_connections_total")
                         - total(first, "ekey_egd_connections_total"), 1)
        self.assertEqual(values(second, "ekey_pool_capacity_bytes"), [65536])

    def test_faultyKeysStopped(self):
        """
        A key that reports a fail mode is self-stopped, and a key whose
        generator is stuck has failed the health tests, in the metrics and
        on the page, while the well key runs on.
        """
        self.startDaemon(self.startKeys(faulty=True))
        samples = self.waitForStates({SERIAL: "running", FAIL_MODE_SERIAL: "self_stopped",
                                      STUCK_SERIAL: "failed_health"})
        self.assertEqual(values(samples, "ekey_key_up", serial=FAIL_MODE_SERIAL), [0])
        self.assertEqual(values(samples, "ekey_key_up", serial=STUCK_SERIAL), [0])
        self.assertEqual(values(samples, "ekey_key_up", serial=SERIAL), [1])
        status, headers, body = fetch(self.baseURL)
        self.assertEqual(status, 200)
        self.assertEqual(headers["content-type"], "text/html; charset=utf-8")
        page = body.decode("utf-8")
        for text in (SERIAL, FAIL_MODE_SERIAL, STUCK_SERIAL, "Running OK",
                     "Key has self-stopped", "Failed health tests", "1 of 3 key(s) running"):
            self.assertIn(text, page)


class MutualTLSMetricsTests(_WebInteropMixin, TestCase):
    """
    C{--metrics mtls:...}: the metrics and the page for a remote scraper
    that holds a client certificate, and for nobody else.
    """

    def test_clientCertificateRequired(self):
        """
        Over real TLS, a client with a certificate from the CA scrapes the
        metrics and sees the key running; a client without one is refused
        in the handshake.
        """
        ca = writeCertificateAuthority(os.path.join(self.directory, "ca"))
        caPath = os.path.join(self.directory, "ca", "ca.pem")
        serverCert, serverKey = writeHostCertificate(self.directory, "localhost", ca)
        clientCert, clientKey = writeHostCertificate(self.directory, "prometheus.example", ca)
        self.startDaemon(self.startKeys(faulty=False),
                         metrics=lambda port: mtlsServerEndpoint(port, serverCert, serverKey,
                                                                 caPath))
        url = f"https://localhost:{self.metricsPort}/metrics"
        context = ssl.create_default_context(cafile=caPath)
        context.load_cert_chain(clientCert, clientKey)

        def running():
            status, headers, body = fetch(url, context=context)
            samples = parseMetrics(body.decode("utf-8"))
            return values(samples, "ekey_key_up", serial=SERIAL) == [1] and samples

        waitFor(running, KEY_TIMEOUT, "the key running, over mTLS", self.daemon)
        status, headers, body = fetch(f"https://localhost:{self.metricsPort}/", context=context)
        self.assertEqual(status, 200)
        self.assertIn(b"Running OK", body)
        anonymous = ssl.create_default_context(cafile=caPath)
        with self.assertRaises((ssl.SSLError, ConnectionError, urllib.error.URLError)):
            fetch(url, context=anonymous)


class BrowserInteropTests(_WebInteropMixin, TestCase):
    """
    The status page in a real headless browser.
    """

    def test_pageInChromium(self):
        """
        Chromium renders the page: its DOM holds each key's serial and
        state, and its screenshot is a PNG of the window's size, kept in
        the test's directory.
        """
        chromium = findChromium()
        self.startDaemon(self.startKeys(faulty=True))
        self.waitForStates({SERIAL: "running", FAIL_MODE_SERIAL: "self_stopped",
                            STUCK_SERIAL: "failed_health"})
        status, dom, errors = runChromium(
            self, chromium, ["--dump-dom", self.baseURL], self.directory)
        self.assertEqual(status, 0, errors[-3000:])
        text = dom.decode("utf-8", "replace")
        for expected in ("<title>ekey status</title>", SERIAL, FAIL_MODE_SERIAL, STUCK_SERIAL,
                         "Running OK", "Key has self-stopped", "Failed health tests", "<svg"):
            self.assertIn(expected, text)
        screenshot = os.path.join(self.directory, "status-page.png")
        status, _, errors = runChromium(
            self, chromium, [f"--screenshot={screenshot}", "--window-size=1200,900",
                             "--hide-scrollbars", self.baseURL], self.directory)
        self.assertEqual(status, 0, errors[-3000:])
        self.assertTrue(os.path.exists(screenshot), f"no screenshot; chromium said:\n{errors}")
        with open(screenshot, "rb") as f:
            data = f.read()
        self.assertEqual(pngSize(data), (1200, 900))
        self.assertGreater(len(data), 10000)
        sys.stdout.write(f"\n  screenshot: {screenshot} ({len(data)} bytes; chromium took "
                         f"{self.chromiumSeconds:.1f} s)\n")
