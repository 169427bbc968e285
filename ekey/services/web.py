# -*- test-case-name: tests.test_web -*-
"""
The daemon over HTTP: Prometheus metrics and a status page.

    twistd -n ekey --device ... --port ... --metrics tcp:9110:interface=127.0.0.1

L{makeSite} serves, from one L{ekey.services.daemon.Daemon}, each request
rendered from one snapshot of its typed status (L{Daemon.status}):

  - C{/metrics}: the Prometheus text format, made by C{prometheus_client}
    from a L{DaemonCollector} on a private registry that reads the daemon
    at every scrape;
  - C{/}: one self-contained HTML page (inline CSS and SVG, no scripts, no
    external assets) with the keys' health, the pool, the entropy rate,
    the listeners, the clients and the upstreams, built with
    L{twisted.web.template}, which escapes everything it is given;
  - C{/status.json}: the same data as JSON
    (L{ekey.services.statusviews.daemonJSON}).

Everything shown is a count, a state or a name: never entropy, never key
material.  The site works on any server endpoint, C{mtls:} included
(metrics for a remote Prometheus that holds a client certificate); bind a
plain one to loopback.
"""

from __future__ import annotations

import json
import time
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.template import CharRef, Tag, flatten, tags

from ekey.core.session import KeyState
from ekey.core.status import DaemonStatus, KeyStatus, UpstreamState, UpstreamStatus, celsius
from ekey.services.daemon import HISTORY, SAMPLE_INTERVAL
from ekey.services.statusviews import daemonJSON

log = Logger()

#: Seconds between refreshes of the status page.
REFRESH_SECONDS = 10

#: What the status page may load: nothing but its own inline styles and
#: images from data: URLs.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

#: Every key state's name in metrics (the C{state} label), in order.
KEY_STATES: Tuple[str, ...] = tuple(state.name.lower() for state in KeyState)

#: The per-key counters: (metric name, help, value of a connected key's
#: L{KeyStatus}).
_KEY_COUNTERS: Tuple[Tuple[str, str, Callable[[KeyStatus], int]], ...] = (
    ("ekey_key_rekeys", "Session re-keys on the key's current connection.",
     lambda key: key.readings.rekeys),
    ("ekey_key_resets", "Resets of the key on its current connection.",
     lambda key: key.readings.resets),
    ("ekey_key_mac_failures",
     "Frames whose MAC did not verify, on the key's current connection.",
     lambda key: key.readings.macFailures),
    ("ekey_key_framing_errors", "Framing errors on the key's current connection.",
     lambda key: key.readings.framingErrors),
    ("ekey_key_packet_errors", "Packets in error on the key's current connection.",
     lambda key: key.readings.packetErrors),
    ("ekey_key_entropy_bytes",
     "Verified entropy bytes from the key on its current connection.",
     lambda key: key.readings.entropyBytes),
    ("ekey_key_read_bytes", "Bytes read from the key on its current connection.",
     lambda key: key.readings.bytesRead),
    ("ekey_key_health_fips_blocks",
     "FIPS 140-2 blocks (20,000 bits) of the key's output tested by the host.",
     lambda key: key.healthBlocks),
    ("ekey_key_health_fips_failures",
     "FIPS 140-2 blocks of the key's output that failed the host's tests.",
     lambda key: key.healthFailures),
)

#: The per-key readings exported as gauges: (metric name, help, value or
#: C{None} if the key has not sent it).
_KEY_GAUGES: Tuple[Tuple[str, str, Callable[[KeyStatus], Optional[float]]], ...] = (
    ("ekey_key_temperature_kelvin", "The key's temperature.",
     lambda key: (None if key.readings.temperatureTenthsK is None
                  else key.readings.temperatureTenthsK / 10)),
    ("ekey_key_voltage_volts", "The key's supply voltage.",
     lambda key: (None if key.readings.voltageMillivolts is None
                  else key.readings.voltageMillivolts / 1000)),
)

#: Every upstream state's name in metrics (the C{state} label), in order.
UPSTREAM_STATES: Tuple[str, ...] = tuple(state.value for state in UpstreamState)

#: The per-upstream counters and gauges: (metric family, name, help, value
#: of an L{UpstreamStatus}).
_UPSTREAM_FAMILIES: Tuple[Tuple[type, str, str, Callable[[UpstreamStatus], int]], ...] = (
    (CounterMetricFamily, "ekey_upstream_pulled_bytes",
     "Bytes from the upstream that passed the health tests and went into the pool.",
     lambda upstream: upstream.bytesPulled),
    (CounterMetricFamily, "ekey_upstream_refused_bytes",
     "Tested bytes from the upstream that the pool had no room for.",
     lambda upstream: upstream.bytesRefused),
    (GaugeMetricFamily, "ekey_upstream_in_flight_bytes",
     "Bytes asked of the upstream and not yet received.",
     lambda upstream: upstream.inFlight),
    (GaugeMetricFamily, "ekey_upstream_testing_bytes",
     "Bytes received from the upstream and still held by the health tests.",
     lambda upstream: upstream.testing),
    (CounterMetricFamily, "ekey_upstream_connections", "Connections made to the upstream.",
     lambda upstream: upstream.connections),
    (CounterMetricFamily, "ekey_upstream_health_failures",
     "Connections to the upstream dropped because its bytes failed the health tests.",
     lambda upstream: upstream.healthFailures),
    (GaugeMetricFamily, "ekey_upstream_priority",
     "The upstream's priority: lower is asked first, higher only while every lower one "
     "is down or stalled.", lambda upstream: upstream.priority),
)


# Metrics ------------------------------------------------------------------------


class DaemonCollector:
    """
    A C{prometheus_client} collector that reads a daemon at scrape time.
    """

    def __init__(self, daemon):
        """
        @param daemon: an L{ekey.services.daemon.Daemon}.
        """
        self.daemon = daemon

    def describe(self) -> list:
        """
        Nothing: the metrics are only known at scrape time (this keeps the
        registry from collecting at registration).
        """
        return []

    def collect(self) -> Iterator:
        """
        @return: the daemon's metric families, as they are now.
        """
        status = self.daemon.status()
        yield from self._pool(status)
        yield from self._listeners(status)
        yield from self._keys(status)
        yield from self._upstreams(status)
        yield from self._kernel(status)

    def _pool(self, status: DaemonStatus):
        pool = status.pool
        yield GaugeMetricFamily("ekey_pool_level_bytes", "Entropy bytes in the pool.",
                                value=pool.level)
        yield GaugeMetricFamily("ekey_pool_capacity_bytes", "Bytes the pool can hold.",
                                value=pool.capacity)
        yield CounterMetricFamily("ekey_pool_in_bytes",
                                  "Bytes added to the pool (from keys and upstreams).",
                                  value=pool.bytesIn)
        yield CounterMetricFamily("ekey_pool_out_bytes",
                                  "Bytes taken from the pool (by clients and sinks).",
                                  value=pool.bytesOut)
        yield CounterMetricFamily("ekey_pool_refused_bytes",
                                  "Bytes refused because the pool was full.",
                                  value=pool.bytesRefused)
        yield GaugeMetricFamily("ekey_pool_waiting_readers",
                                "Readers waiting for entropy (blocking reads and sinks).",
                                value=pool.waitingReaders)
        if pool.refillAt is not None:
            yield GaugeMetricFamily("ekey_pool_refill_at_bytes",
                                    "Level below which the relay pulls from its upstreams now "
                                    "(rises from the low watermark under heavy demand).",
                                    value=pool.refillAt)
            yield CounterMetricFamily("ekey_pool_ran_dry_refills",
                                      "Refills from upstreams during which readers emptied the "
                                      "pool; a steady rise says the watermarks are small for "
                                      "the demand.", value=pool.ranDry)
        yield GaugeMetricFamily("ekey_uptime_seconds", "Seconds since the daemon started.",
                                value=round(status.uptime, 1))

    def _listeners(self, status: DaemonStatus):
        labels = ["listener"]
        served = CounterMetricFamily("ekey_egd_served_bytes",
                                     "Entropy bytes served to EGD clients.", labels=labels)
        clients = GaugeMetricFamily("ekey_egd_clients", "EGD clients connected.",
                                    labels=labels)
        connections = CounterMetricFamily("ekey_egd_connections",
                                          "EGD connections accepted.", labels=labels)
        errors = CounterMetricFamily(
            "ekey_egd_protocol_errors",
            "EGD connections closed because the client broke the protocol.", labels=labels)
        refused = CounterMetricFamily(
            "ekey_egd_refused_connections",
            "EGD connections refused because the listener had its most clients.",
            labels=labels)
        idle = CounterMetricFamily("ekey_egd_idle_closed_connections",
                                   "EGD connections closed for sending no request.",
                                   labels=labels)
        requests = CounterMetricFamily("ekey_egd_requests", "EGD commands received.",
                                       labels=["listener", "command"])
        for listener in status.listeners:
            value = [listener.description]
            served.add_metric(value, listener.bytesServed)
            clients.add_metric(value, listener.clients)
            connections.add_metric(value, listener.connections)
            errors.add_metric(value, listener.protocolErrors)
            refused.add_metric(value, listener.refused)
            idle.add_metric(value, listener.idleClosed)
            for command, count in listener.requests:
                requests.add_metric(value + [command], count)
        yield from (served, clients, connections, errors, refused, idle, requests)

    def _keys(self, status: DaemonStatus):
        labels = ["key", "path", "serial"]
        up = GaugeMetricFamily("ekey_key_up", "1 if the key is giving entropy, else 0.",
                               labels=labels)
        state = GaugeMetricFamily(
            "ekey_key_state", "1 for the state the key is in, 0 for every other.",
            labels=labels + ["state"])
        counters = [(CounterMetricFamily(name, text, labels=labels), read)
                    for name, text, read in _KEY_COUNTERS]
        gauges = [(GaugeMetricFamily(name, text, labels=labels), read)
                  for name, text, read in _KEY_GAUGES]
        for numbered in status.keys:
            key = numbered.key
            value = [str(numbered.number), key.path, key.serial or ""]
            up.add_metric(value, 1 if key.running else 0)
            for member in KeyState:
                state.add_metric(value + [member.name.lower()], 1 if member is key.state else 0)
            if key.readings is None:
                continue
            for family, read in counters + gauges:
                reading = read(key)
                if reading is not None:
                    family.add_metric(value, reading)
        yield up
        yield state
        yield from (family for family, _ in counters + gauges)

    def _upstreams(self, status: DaemonStatus):
        labels = ["upstream"]
        up = GaugeMetricFamily(
            "ekey_upstream_up",
            "1 if a connection to the upstream is up (delivering or stalled), else 0.",
            labels=labels)
        state = GaugeMetricFamily(
            "ekey_upstream_state", "1 for the state the upstream is in, 0 for every other.",
            labels=labels + ["state"])
        families = [(family(name, text, labels=labels), read)
                    for family, name, text, read in _UPSTREAM_FAMILIES]
        for upstream in status.upstreams:
            value = [upstream.description]
            up.add_metric(value, 1 if upstream.connected else 0)
            for member in UpstreamState:
                state.add_metric(value + [member.value], 1 if member is upstream.state else 0)
            for family, read in families:
                family.add_metric(value, read(upstream))
        yield up
        yield state
        yield from (family for family, _ in families)

    def _kernel(self, status: DaemonStatus):
        kernel = status.kernel
        if kernel is None:
            return
        yield CounterMetricFamily("ekey_kernel_fed_bytes",
                                  "Bytes added to the kernel's random pool.",
                                  value=kernel.bytesFed)
        yield CounterMetricFamily("ekey_kernel_feeds",
                                  "Successful additions to the kernel's random pool.",
                                  value=kernel.feeds)


class GeneratedResource(Resource):
    """
    A leaf resource made afresh on every C{GET}, never cached.
    """

    isLeaf = True

    def __init__(self, contentType: str, generate: Callable[[], bytes],
                 headers: Optional[Dict[str, str]] = None):
        """
        @param contentType: its C{content-type}.
        @param generate: makes its body.
        @param headers: more response headers.
        """
        Resource.__init__(self)
        self.generate = generate
        self.headers = {"content-type": contentType, "cache-control": "no-store",
                        **(headers or {})}

    def render_GET(self, request) -> bytes:
        for name, value in self.headers.items():
            request.setHeader(name.encode("ascii"), value.encode("ascii"))
        return self.generate()


# The page -----------------------------------------------------------------------

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; background: #fafafa; }
h1 { font-size: 1.5em; margin: 0 0 .2em; }
h2 { font-size: 1.15em; margin: 1.4em 0 .4em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; background: #fff; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #eee; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.state { font-weight: 600; padding: .05em .45em; border-radius: .3em; white-space: nowrap; }
.ok { background: #d8f5d8; color: #145214; }
.bad { background: #fbd5d5; color: #7a1010; }
.wait { background: #fdf1c7; color: #6b5200; }
.muted { color: #777; }
code { font-size: .95em; }
svg text { font: 11px system-ui, sans-serif; fill: #444; }
"""



#: A non-breaking space, between a number and its unit.
_NBSP = CharRef(0xA0)

#: An empty cell.
_DASH = "–"


def _svg(name: str, **attributes) -> Tag:
    """
    @return: an SVG element (L{tags} knows only HTML's names); attribute
        names are given with C{_} for C{-}.
    """
    return Tag(name)(**{key.replace("_", "-"): str(value) for key, value in attributes.items()})


def _number(value) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def _numeric(*children) -> Tag:
    """
    @return: a right-aligned table cell.
    """
    return tags.td(**{"class": "n"})(*children)


def _muted(text: str) -> Tag:
    return tags.span(**{"class": "muted"})(text)


def _table(headers: Sequence[str], rows: List[List[object]], empty: str) -> Tag:
    """
    @param rows: cells: L{Tag}s of C{td} as they are, anything else put in
        a plain C{td}.
    """
    if not rows:
        return tags.p(**{"class": "muted"})(empty)
    return tags.table(
        tags.thead(tags.tr([tags.th(header) for header in headers])),
        tags.tbody([tags.tr([cell if isinstance(cell, Tag) and cell.tagName == "td"
                             else tags.td(cell) for cell in row]) for row in rows]))


def _stateClass(key: KeyStatus) -> str:
    if key.running:
        return "ok"
    return "bad" if key.state.stopped else "wait"


def _poolBar(pool) -> Tag:
    capacity = max(pool.capacity, 1)
    fraction = min(max(pool.level / capacity, 0.0), 1.0)
    width = 400
    return _svg("svg", xmlns="http://www.w3.org/2000/svg", width=width, height=22, role="img",
                aria_label=f"pool {fraction:.0%} full")(
        _svg("rect", x=0, y=0, width=width, height=22, fill="#e4e4e4", stroke="#999"),
        _svg("rect", x=0, y=0, width=round(fraction * width, 1), height=22, fill="#3a8d3a"),
        _svg("text", x=6, y=15)(f"{fraction:.1%}"))


def _chart(history: Sequence[Tuple[float, float]], now: float, span: float) -> Tag:
    """
    @param history: C{(time, bytes per second)} samples, oldest first.
    @param span: the seconds the chart covers, ending at C{now}.
    @return: an inline SVG line chart of the rate.
    """
    width, height, left, bottom, top = 600, 160, 56, 20, 10
    plotWidth, plotHeight = width - left - 8, height - top - bottom
    samples = [(t, rate) for t, rate in history if t >= now - span]
    peak = max([rate for _, rate in samples] + [0.0])
    scale = _niceCeiling(peak)
    chart = _svg("svg", xmlns="http://www.w3.org/2000/svg", width=width, height=height,
                 role="img", aria_label=f"entropy rate over the last {span / 60:g} minutes")(
        _svg("rect", x=left, y=top, width=plotWidth, height=plotHeight, fill="#fff",
             stroke="#bbb"),
        _svg("text", x=left - 4, y=top + 9, text_anchor="end")(_rate(scale)),
        _svg("text", x=left - 4, y=top + plotHeight, text_anchor="end")("0"),
        _svg("text", x=left, y=height - 4)(f"{span / 60:g} min ago"),
        _svg("text", x=left + plotWidth, y=height - 4, text_anchor="end")("now"))
    if len(samples) >= 2:
        points = " ".join(
            f"{left + plotWidth * (1 - (now - t) / span):.1f},"
            f"{top + plotHeight * (1 - rate / scale):.1f}" for t, rate in samples)
        chart(_svg("polyline", fill="none", stroke="#2a6fb0", stroke_width=2, points=points))
    else:
        chart(_svg("text", x=left + plotWidth / 2, y=top + plotHeight / 2,
                   text_anchor="middle")("collecting samples…"))
    return chart


def _niceCeiling(value: float) -> float:
    """
    @return: a round number (1, 2 or 5 times a power of ten) at least
        C{value}, and at least 1.
    """
    if value <= 1:
        return 1.0
    magnitude = 1.0
    while magnitude * 10 <= value:
        magnitude *= 10
    for step in (1, 2, 5, 10):
        if step * magnitude >= value:
            return step * magnitude
    return 10 * magnitude  # pragma: no cover


def _rate(bytesPerSecond: float) -> str:
    for unit, size in (("MB/s", 1e6), ("kB/s", 1e3)):
        if bytesPerSecond >= size:
            return f"{bytesPerSecond / size:g} {unit}"
    return f"{bytesPerSecond:g} B/s"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    days, seconds = divmod(seconds, 86400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    if days:
        return f"{days}d {hours}h {minutes}m"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {seconds}s"


def _keyRow(numbered) -> List[object]:
    key = numbered.key
    readings = key.readings
    tenths = readings.temperatureTenthsK if readings is not None else None
    millivolts = readings.voltageMillivolts if readings is not None else None
    return [
        _numeric(str(numbered.number)),
        tags.code(key.path),
        tags.code(key.serial) if key.serial else _muted("unknown"),
        tags.span(**{"class": f"state {_stateClass(key)}"})(key.state.value),
        key.reason,
        _numeric(f"{celsius(tenths):.1f}", _NBSP, "°C") if tenths is not None else _numeric(_DASH),
        _numeric(f"{millivolts / 1000:.3f}", _NBSP, "V") if millivolts is not None
        else _numeric(_DASH),
        _numeric(_number(readings.entropyBytes) if readings is not None else _DASH),
        _numeric(_number(readings.macFailures) if readings is not None else _DASH),
        _numeric(_number(key.healthFailures)),
    ]


#: The class of an upstream's state on the page.
_UPSTREAM_CLASSES = {UpstreamState.UP: "ok", UpstreamState.CONNECTING: "wait",
                     UpstreamState.STALLED: "wait", UpstreamState.DOWN: "bad"}


def _upstreamRow(upstream: UpstreamStatus) -> List[object]:
    """
    @return: an upstream's cells in the page's table of upstreams.
    """
    return [
        tags.code(upstream.description),
        tags.span(**{"class": f"state {_UPSTREAM_CLASSES[upstream.state]}"})(
            upstream.state.value),
        _numeric(str(upstream.priority)),
        _numeric(_number(upstream.bytesPulled)),
        _numeric(_number(upstream.inFlight)),
        _numeric(_number(upstream.testing)),
        _numeric(_number(upstream.bytesRefused)),
        _numeric(_number(upstream.connections)),
        _numeric(_number(upstream.healthFailures)),
        upstream.lastError or _muted(_DASH),
    ]


def statusPage(status: DaemonStatus, span: float = 600.0) -> Tag:
    """
    The status page, as a L{twisted.web.template} tree.

    @param span: the seconds the rate chart covers.
    """
    pool = status.pool
    rate = pool.bytesPerSecond
    sections = [
        tags.h2("Keys"),
        _table(["#", "Path", "Serial", "State", "Reason", "Temperature", "Voltage",
                "Entropy (bytes)", "MAC failures", "FIPS failures"],
               [_keyRow(numbered) for numbered in status.keys], "No keys."),
        tags.h2("Pool"),
        _poolBar(pool),
        tags.p(f"{_number(pool.level)} of {_number(pool.capacity)} bytes; "
               f"in {_number(pool.bytesIn)}, out {_number(pool.bytesOut)}, "
               f"refused {_number(pool.bytesRefused)}; "
               f"{_number(pool.waitingReaders)} reader(s) waiting"
               + (f"; {_rate(round(rate, 1))} now" if rate is not None else "") + "."),
        tags.h2(f"Entropy rate, last {span / 60:g} minutes"),
        _chart(status.history, status.time, span),
        tags.h2("EGD listeners"),
        _table(["Endpoint", "Clients", "Connections", "Bytes served", "Requests",
                "Protocol errors"],
               [[tags.code(listener.description), _numeric(_number(listener.clients)),
                 _numeric(_number(listener.connections)),
                 _numeric(_number(listener.bytesServed)),
                 ", ".join(f"{name} {count}" for name, count in listener.requests),
                 _numeric(_number(listener.protocolErrors))]
                for listener in status.listeners], "No EGD listeners."),
        tags.h2("Clients"),
        _table(["Peer", "Identity", "Listener", "Bytes served", "Requests", "Connected for"],
               [[tags.code(client.peer), client.identity or _muted(_DASH),
                 tags.code(client.listener), _numeric(_number(client.bytesServed)),
                 _numeric(_number(client.requests)),
                 _numeric(_duration(status.time - client.connectedAt))]
                for client in status.clients], "No EGD clients connected."),
        tags.h2("Upstreams"),
        _table(["Upstream", "State", "Priority", "Bytes pulled", "In flight", "Under test",
                "Refused", "Connections", "Health failures", "Last error"],
               [_upstreamRow(upstream) for upstream in status.upstreams], "No upstreams."),
    ]
    kernel = status.kernel
    if kernel is not None:
        sections += [
            tags.h2("Kernel"),
            tags.p(f"{_number(kernel.bytesFed)} bytes fed in {_number(kernel.feeds)} additions"
                   + (f"; last error: {kernel.lastError}" if kernel.lastError else "") + "."),
        ]
    generated = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(status.time))
    return tags.html(lang="en")(
        tags.head(
            tags.meta(charset="utf-8"),
            tags.meta(**{"http-equiv": "refresh", "content": str(REFRESH_SECONDS)}),
            tags.meta(name="viewport", content="width=device-width, initial-scale=1"),
            tags.title("ekey status"),
            tags.style(_STYLE)),
        tags.body(
            tags.h1("ekey"),
            tags.p(**{"class": "muted"})(
                f"{status.keysRunning} of {len(status.keys)} key(s) running; up "
                f"{_duration(status.uptime)}; {generated}. ",
                tags.a(href="metrics")("metrics"), " · ",
                tags.a(href="status.json")("status.json")),
            *sections))


def renderPage(status: DaemonStatus, span: float = 600.0) -> bytes:
    """
    @param span: the seconds the rate chart covers.
    @return: the whole status page, as UTF-8 HTML.
    """
    chunks: List[bytes] = [b"<!DOCTYPE html>\n"]
    failures: list = []
    flatten(None, statusPage(status, span), chunks.append).addErrback(failures.append)
    if failures:
        failures[0].raiseException()
    return b"".join(chunks)


def makeSite(daemon, reactor=None) -> Site:
    """
    The daemon's web site: C{/} (the status page), C{/metrics}
    (Prometheus) and C{/status.json}.

    @param daemon: an L{ekey.services.daemon.Daemon}.
    @param reactor: an L{IReactorTime} for connection time-outs and the
        access log (default the daemon's clock).
    @return: a L{Site}, for any server endpoint (C{tcp:}, C{unix:},
        C{mtls:}).
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaemonCollector(daemon))
    root = Resource()
    root.putChild(b"", GeneratedResource(
        "text/html; charset=utf-8",
        lambda: renderPage(daemon.status(), span=HISTORY * SAMPLE_INTERVAL),
        {"content-security-policy": CONTENT_SECURITY_POLICY, "x-content-type-options": "nosniff"}))
    root.putChild(b"metrics", GeneratedResource(
        CONTENT_TYPE_LATEST, lambda: generate_latest(registry)))
    root.putChild(b"status.json", GeneratedResource(
        "application/json",
        lambda: json.dumps(daemonJSON(daemon.status()), indent=2,
                           sort_keys=True).encode("utf-8")))
    site = Site(root, reactor=reactor if reactor is not None else daemon.clock)
    # No "Starting factory <Site object at 0x...>" lines in the daemon's log.
    site.noisy = False
    return site
