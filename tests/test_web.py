"""
Tests for L{ekey.services.web}: the Prometheus metrics, the status page and
C{/status.json}, served in memory from a daemon whose key is replayed from
the protocol's test vectors.
"""

import base64
import json
import os
from types import SimpleNamespace

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest

from ekey.services.daemon import SAMPLE_INTERVAL, Daemon
from ekey.core.pool import EntropyPool
from ekey.services.server import EGDServerFactory
from ekey.core.session import KeyState
from ekey.core.status import UpstreamState
from ekey.services.web import KEY_STATES, UPSTREAM_STATES, makeSite
from tests.memory import boundSocket, connectKey, startKeyManager, writeKeyring
from tests.test_status import upstreamStatus
from tests.vectors import LONG_TERM_KEY, SESSION

#: Characters that would be markup if they were not escaped.
HOSTILE_NAME = "<b onmouseover='x'>&\"key\""


def get(site, path, clientPort=50000):
    """
    Make one HTTP/1.0 request of C{site} over an in-memory transport.

    @return: C{(status code, headers (lower-case names), body)}.
    """
    channel = site.buildProtocol(None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", clientPort))
    channel.makeConnection(transport)
    channel.dataReceived(b"GET " + path + b" HTTP/1.0\r\nHost: localhost\r\n\r\n")
    response = transport.value()
    channel.connectionLost(Failure(ConnectionDone()))
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def parseMetrics(body):
    """
    @return: every sample, as C{{(name, sorted label items): value}}.
    """
    samples = {}
    for family in text_string_to_metric_families(body.decode("utf-8")):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def sampleValues(samples, name, **labels):
    """
    @return: the values of the samples called C{name} whose labels include
        C{labels}.
    """
    return [value for (sampleName, items), value in samples.items()
            if sampleName == name and set(labels.items()) <= set(items)]


class WebTestsMixin:
    """
    A daemon with a key manager, a pool and an EGD listener on a
    L{MemoryReactorClock}, and its site.
    """

    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.keyringPath = writeKeyring(self)
        self.pool = EntropyPool(1 << 16)
        self.keys = startKeyManager(self, self.reactor, self.pool, self.keyringPath)
        self.daemon = Daemon(self.keys, self.pool, self.reactor, lambda: None)
        self.factory = EGDServerFactory(self.pool, pid=1234, clock=self.reactor)
        self.daemon.listeners.append(("tcp:8888:interface=127.0.0.1", self.factory))
        self.site = makeSite(self.daemon)

    def socketPath(self, name="key.sock"):
        directory = self.mktemp()
        os.mkdir(directory)
        return boundSocket(self, os.path.join(directory, name))

    def addKey(self, name="key.sock", frames=8):
        """
        Add a key and replay the transcript's first C{frames} frames to it
        (after 8 it is running, has sent its temperature and voltage and
        four entropy frames).

        @return: its number and its L{ekey.services.device.KeyProtocol}.
        """
        number = self.keys.add(self.socketPath(name))
        return number, connectKey(self, self.reactor, self.keys, number, frames)

    def connectClient(self, port=40000):
        """
        Connect an EGD client to the listener in memory.

        @return: its protocol and transport.
        """
        protocol = self.factory.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", port))
        protocol.makeConnection(transport)
        self.addCleanup(lambda: protocol.connectionLost(Failure(ConnectionDone())))
        return protocol, transport

    def setUpstreams(self, *upstreams):
        """
        Make the daemon a relay whose upstreams answer C{upstreams} (each
        an L{ekey.core.status.UpstreamStatus}) from their C{status()}.
        """
        self.daemon.pullPolicy = SimpleNamespace(
            upstreams=[SimpleNamespace(status=lambda upstream=upstream: upstream)
                       for upstream in upstreams], refillAt=98304, ranDry=3)

    def metrics(self):
        status, headers, body = get(self.site, b"/metrics")
        self.assertEqual(status, 200)
        return parseMetrics(body)

    def page(self):
        status, headers, body = get(self.site, b"/")
        self.assertEqual(status, 200)
        return body.decode("utf-8")


class MetricsTests(WebTestsMixin, unittest.TestCase):
    """
    C{/metrics} is Prometheus's text format, read from the daemon at every
    scrape.
    """

    def test_contentType(self):
        """
        The metrics are served with Prometheus's content type and parse.
        """
        status, headers, body = get(self.site, b"/metrics")
        self.assertEqual(status, 200)
        self.assertTrue(headers["content-type"].startswith("text/plain; version="))
        self.assertEqual(headers["cache-control"], "no-store")
        names = {family.name for family in text_string_to_metric_families(body.decode())}
        self.assertIn("ekey_pool_level_bytes", names)
        self.assertIn("ekey_pool_in_bytes", names)

    def test_poolMoves(self):
        """
        The pool's level, capacity and traffic follow the pool between
        scrapes.
        """
        before = self.metrics()
        self.assertEqual(before[("ekey_pool_level_bytes", ())], 0)
        self.assertEqual(before[("ekey_pool_capacity_bytes", ())], 1 << 16)
        self.assertEqual(before[("ekey_pool_in_bytes_total", ())], 0)
        self.pool.add(b"\x55" * 100)
        self.pool.take(30)
        after = self.metrics()
        self.assertEqual(after[("ekey_pool_level_bytes", ())], 70)
        self.assertEqual(after[("ekey_pool_in_bytes_total", ())], 100)
        self.assertEqual(after[("ekey_pool_out_bytes_total", ())], 30)
        self.assertEqual(after[("ekey_pool_refused_bytes_total", ())], 0)

    def test_egdTraffic(self):
        """
        EGD requests are counted by command and listener, and so are the
        bytes served, the clients connected and protocol errors.
        """
        listener = "tcp:8888:interface=127.0.0.1"
        self.pool.add(b"\x55" * 100)
        protocol, transport = self.connectClient()
        protocol.dataReceived(b"\x00\x01\x10\x01\x08")
        samples = self.metrics()
        self.assertEqual(
            samples[("ekey_egd_requests_total",
                     (("command", "Read"), ("listener", listener)))], 2)
        self.assertEqual(
            samples[("ekey_egd_requests_total",
                     (("command", "GetLevel"), ("listener", listener)))], 1)
        self.assertEqual(
            samples[("ekey_egd_served_bytes_total", (("listener", listener),))], 24)
        self.assertEqual(samples[("ekey_egd_clients", (("listener", listener),))], 1)
        self.assertEqual(samples[("ekey_pool_out_bytes_total", ())], 24)
        bad, _ = self.connectClient(40001)
        bad.dataReceived(b"\x09")
        samples = self.metrics()
        self.assertEqual(
            samples[("ekey_egd_protocol_errors_total", (("listener", listener),))], 1)
        self.assertEqual(
            samples[("ekey_egd_connections_total", (("listener", listener),))], 2)
        self.factory.refused = 3
        samples = self.metrics()
        self.assertEqual(
            samples[("ekey_egd_refused_connections_total", (("listener", listener),))], 3)
        self.assertEqual(
            samples[("ekey_egd_idle_closed_connections_total", (("listener", listener),))], 0)

    def test_runningKey(self):
        """
        A running key is up, in state C{running} and no other, with its
        readings in kelvin and volts and its counters, labelled with its
        number, path and serial.
        """
        number, protocol = self.addKey()
        path = self.keys.keyStatus(number).key.path
        labels = {"key": "1", "path": path, "serial": SESSION["serial_pem"]}
        samples = self.metrics()
        self.assertEqual(sampleValues(samples, "ekey_key_up", **labels), [1])
        for state in KEY_STATES:
            self.assertEqual(sampleValues(samples, "ekey_key_state", state=state, **labels),
                             [1 if state == "running" else 0], state)
        self.assertEqual(sampleValues(samples, "ekey_key_temperature_kelvin", **labels),
                         [315.0])
        self.assertEqual(sampleValues(samples, "ekey_key_voltage_volts", **labels), [3.254])
        self.assertEqual(sampleValues(samples, "ekey_key_entropy_bytes_total", **labels), [128])
        self.assertEqual(sampleValues(samples, "ekey_key_mac_failures_total", **labels), [0])
        for name in ("ekey_key_rekeys_total", "ekey_key_framing_errors_total",
                     "ekey_key_packet_errors_total", "ekey_key_health_fips_failures_total"):
            self.assertEqual(len(sampleValues(samples, name, **labels)), 1, name)

    def test_stoppedKey(self):
        """
        A key that failed the health tests is down and in state
        C{failed_health}.
        """
        number, protocol = self.addKey()
        protocol.pipeline.halt(KeyState.FAILED_HEALTH, "stuck generator")
        protocol.flush()
        samples = self.metrics()
        self.assertEqual(sampleValues(samples, "ekey_key_up", key="1"), [0])
        self.assertEqual(sampleValues(samples, "ekey_key_state", key="1", state="failed_health"),
                         [1])
        self.assertEqual(sampleValues(samples, "ekey_key_state", key="1", state="running"), [0])

    def test_closedKey(self):
        """
        A key that is not connected is in state C{closed}, with no serial
        and no readings.
        """
        self.keys.add(self.socketPath())
        samples = self.metrics()
        self.assertEqual(
            sampleValues(samples, "ekey_key_state", key="1", serial="", state="closed"), [1])
        self.assertEqual(sampleValues(samples, "ekey_key_temperature_kelvin"), [])

    def test_upstreamsAndKernel(self):
        """
        Each upstream has its connection (up while delivering or stalled),
        its state as a one-of-four gauge, its bytes pulled, refused, in
        flight and under test, its connections, health failures and
        priority; the kernel feeder's bytes are counted.
        """
        self.setUpstreams(
            upstreamStatus(description="tls:a.example:8888", priority=0,
                           state=UpstreamState.UP, inFlight=2976, testing=0, healthFailures=0,
                           lastError=None),
            upstreamStatus(),
            upstreamStatus(description="tcp:c.example:8888", state=UpstreamState.DOWN,
                           bytesPulled=0, inFlight=0, testing=0, connections=0))
        self.daemon.kernelFeeder = SimpleNamespace(bytesFed=512, feeds=2, lastError=None)
        samples = self.metrics()
        a, b, c = "tls:a.example:8888", "tls:b.example:8888", "tcp:c.example:8888"
        self.assertEqual([sampleValues(samples, "ekey_upstream_up", upstream=name)
                          for name in (a, b, c)], [[1], [1], [0]])
        for name, state in ((a, "up"), (b, "stalled"), (c, "down")):
            for other in UPSTREAM_STATES:
                self.assertEqual(sampleValues(samples, "ekey_upstream_state", upstream=name,
                                              state=other), [1 if other == state else 0])
        expected = {
            "ekey_upstream_pulled_bytes_total": (4096, 4096, 0),
            "ekey_upstream_refused_bytes_total": (224, 224, 224),
            "ekey_upstream_in_flight_bytes": (2976, 2976, 0),
            "ekey_upstream_testing_bytes": (0, 448, 0),
            "ekey_upstream_connections_total": (2, 2, 0),
            "ekey_upstream_health_failures_total": (0, 1, 1),
            "ekey_upstream_priority": (0, 1, 1),
        }
        for metric, values in expected.items():
            self.assertEqual(tuple(samples[(metric, (("upstream", name),))]
                                   for name in (a, b, c)), values, metric)
        self.assertEqual(samples[("ekey_pool_refill_at_bytes", ())], 98304)
        self.assertEqual(samples[("ekey_pool_ran_dry_refills_total", ())], 3)
        self.assertEqual(samples[("ekey_kernel_fed_bytes_total", ())], 512)
        self.assertEqual(samples[("ekey_kernel_feeds_total", ())], 2)

    def test_upstreamStates(self):
        """
        The C{state} label takes every state an upstream can be in, by
        its name in words.
        """
        self.assertEqual(UPSTREAM_STATES, ("connecting", "up", "stalled", "down"))

    def test_noUpstreams(self):
        """
        A daemon without upstreams has no upstream samples.
        """
        samples = self.metrics()
        self.assertEqual([key for key in samples if key[0].startswith("ekey_upstream")], [])

    def test_noKernelFeeder(self):
        """
        Without a kernel feeder there are no kernel metrics.
        """
        self.assertEqual(sampleValues(self.metrics(), "ekey_kernel_fed_bytes_total"), [])


class StatusPageTests(WebTestsMixin, unittest.TestCase):
    """
    C{/} is one self-contained, escaped HTML page of the daemon's health.
    """

    def test_keyHealth(self):
        """
        The page shows a key's number, path, serial, state in words,
        temperature in degrees Celsius and voltage.
        """
        self.addKey()
        page = self.page()
        self.assertIn(SESSION["serial_pem"], page)
        self.assertIn("Running OK", page)
        self.assertIn("41.9&#160;°C", page)
        self.assertIn("3.254&#160;V", page)
        self.assertIn("1 of 1 key(s) running", page)

    def test_stoppedKey(self):
        """
        A stopped key shows its state and reason.
        """
        number, protocol = self.addKey()
        protocol.pipeline.halt(KeyState.FAILED_HEALTH, "stuck generator")
        protocol.flush()
        page = self.page()
        self.assertIn('class="state bad">Failed health tests<', page)
        self.assertIn("stuck generator", page)
        self.assertIn("0 of 1 key(s) running", page)

    def test_hostilePathEscaped(self):
        """
        A key path with markup in it is shown escaped, never as markup.
        """
        self.keys.add(self.socketPath(HOSTILE_NAME))
        page = self.page()
        self.assertNotIn("<b onmouseover", page)
        self.assertIn("&lt;b onmouseover='x'&gt;&amp;\"key\"", page)

    def test_hostilePeerAndUpstreamEscaped(self):
        """
        Peers, identities, upstreams and their errors are escaped too.
        """
        protocol, _ = self.connectClient()
        protocol.identity = "<i>evil</i>"
        self.setUpstreams(upstreamStatus(description="tcp:<u>:1",
                                         lastError="<script>x</script>"))
        page = self.page()
        for markup in ("<i>evil", "<u>", "<script>"):
            self.assertNotIn(markup, page)
        self.assertIn("&lt;i&gt;evil&lt;/i&gt;", page)
        self.assertIn("&lt;script&gt;x&lt;/script&gt;", page)

    def test_selfContained(self):
        """
        The page loads nothing: no scripts, no stylesheets, no external
        images; a content security policy forbids them anyway.
        """
        self.addKey()
        status, headers, body = get(self.site, b"/")
        page = body.decode("utf-8")
        self.assertEqual(headers["content-type"], "text/html; charset=utf-8")
        self.assertIn("default-src 'none'", headers["content-security-policy"])
        for forbidden in ('src="http', "src='http", "<script", "<link", "url(", "@import",
                          "<iframe", "<img"):
            self.assertNotIn(forbidden, page)
        self.assertIn("<style>", page)
        self.assertIn("<svg", page)
        self.assertIn('<meta http-equiv="refresh" content="10" />', page)
        self.assertEqual(headers["x-content-type-options"], "nosniff")
        self.assertEqual(headers["cache-control"], "no-store")
        self.assertTrue(page.startswith("<!DOCTYPE html>\n<html lang=\"en\">"), page[:80])

    def test_upstreams(self):
        """
        Each upstream is a row: endpoint, state (marked good, waiting or
        bad), priority, bytes pulled, in flight, under test and refused,
        connections, health failures and last error.
        """
        self.assertIn("No upstreams.", self.page())
        self.setUpstreams(
            upstreamStatus(description="tls:a.example:8888", priority=0,
                           state=UpstreamState.UP, bytesPulled=1234567, lastError=None),
            upstreamStatus(),
            upstreamStatus(description="tcp:c.example:8888", state=UpstreamState.DOWN),
            upstreamStatus(description="tcp:d.example:8888", state=UpstreamState.CONNECTING))
        page = self.page()
        self.assertIn("<th>State</th><th>Priority</th><th>Bytes pulled</th><th>In flight</th>"
                      "<th>Under test</th><th>Refused</th><th>Connections</th>"
                      "<th>Health failures</th><th>Last error</th>", page)
        self.assertIn('<tr><td><code>tls:b.example:8888</code></td>'
                      '<td><span class="state wait">stalled</span></td><td class="n">1</td>'
                      '<td class="n">4,096</td><td class="n">2,976</td><td class="n">448</td>'
                      '<td class="n">224</td><td class="n">2</td><td class="n">1</td>'
                      '<td>its bytes failed the health tests: stuck</td></tr>', page)
        self.assertIn('<span class="state ok">up</span></td><td class="n">0</td>'
                      '<td class="n">1,234,567</td>', page)
        self.assertIn('<span class="state bad">down</span>', page)
        self.assertIn('<span class="state wait">connecting</span>', page)

    def test_clientsAndListeners(self):
        """
        Connected EGD clients are listed with their peer, identity and
        bytes served.
        """
        self.pool.add(b"\x55" * 64)
        protocol, _ = self.connectClient(41234)
        protocol.identity = "relay-1.example"
        protocol.dataReceived(b"\x01\x20")
        page = self.page()
        self.assertIn("127.0.0.1:41234", page)
        self.assertIn("relay-1.example", page)
        self.assertIn("tcp:8888:interface=127.0.0.1", page)
        self.assertIn("<td class=\"n\">32</td>", page)

    def test_poolBar(self):
        """
        The pool's level is drawn as a bar of its fullness.
        """
        self.pool = self.daemon.pool
        self.pool.add(b"\x55" * (1 << 14))
        page = self.page()
        self.assertIn('aria-label="pool 25% full"', page)
        self.assertIn('width="100.0" height="22" fill="#3a8d3a"', page)

    def test_rateChart(self):
        """
        The entropy rate's history is drawn as a line once there are two
        samples, and the page says it is collecting before then.
        """
        self.daemon.startService()
        self.addCleanup(self.daemon.stopService)
        self.assertIn("collecting samples", self.page())
        for i in range(3):
            self.pool.add(b"\x55" * 500)
            self.reactor.advance(SAMPLE_INTERVAL)
        page = self.page()
        self.assertIn("<polyline", page)
        self.assertIn("100 B/s now", page)

    def test_noSecrets(self):
        """
        Neither entropy in the pool nor the key's long-term key appears on
        the page, in C{/status.json} or in the metrics, in any usual
        encoding.
        """
        self.addKey()
        secret = bytes(range(200, 232))
        self.pool.add(secret)
        everything = b"".join(get(self.site, path)[2]
                              for path in (b"/", b"/status.json", b"/metrics"))
        for data in (secret, LONG_TERM_KEY):
            for encoded in (data, data.hex().encode(), data.hex().upper().encode(),
                            base64.b64encode(data), base64.b64encode(data[:15])):
                self.assertNotIn(encoded, everything)

    def test_notFound(self):
        """
        Other paths are not found.
        """
        self.assertEqual(get(self.site, b"/nothing")[0], 404)


class StatusJSONTests(WebTestsMixin, unittest.TestCase):
    """
    C{/status.json} is the page's data as JSON.
    """

    def test_json(self):
        """
        The keys, the pool, the listeners and the clients are there.
        """
        self.addKey()
        self.pool.add(b"\x55" * 10)
        self.connectClient()
        status, headers, body = get(self.site, b"/status.json")
        self.assertEqual(headers["content-type"], "application/json")
        data = json.loads(body)
        self.assertEqual(data["keys"][0]["serial"], SESSION["serial_pem"])
        self.assertEqual(data["keys"][0]["stateName"], "running")
        self.assertEqual(data["keys"][0]["state"], "Running OK")
        self.assertEqual(data["keys"][0]["readings"]["voltageMillivolts"], 3254)
        self.assertEqual(data["keys"][0]["health"]["fipsFailures"], 0)
        self.assertEqual(data["pool"]["level"], 10)
        self.assertEqual(data["listeners"][0]["clients"], 1)
        self.assertEqual(data["clients"][0]["peer"], "tcp:127.0.0.1:40000")
        self.assertIsNone(data["kernel"])

    def test_upstreams(self):
        """
        Upstreams are there with their state in words and their demand.
        """
        self.setUpstreams(upstreamStatus())
        data = json.loads(get(self.site, b"/status.json")[2])
        self.assertEqual(len(data["upstreams"]), 1)
        self.assertEqual((data["upstreams"][0]["state"], data["upstreams"][0]["inFlight"],
                          data["upstreams"][0]["priority"]), ("stalled", 2976, 1))
