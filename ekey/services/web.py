# -*- test-case-name: tests.test_web -*-
"""
The daemon over HTTP: Prometheus metrics and a status page.

    twistd -n ekey --device ... --port ... --metrics tcp:9110:interface=127.0.0.1

L{makeSite} serves, from one L{ekey.services.daemon.Daemon}:

  - C{/metrics}: the Prometheus text format, made by C{prometheus_client}
    from a L{DaemonCollector} on a private registry that reads the daemon
    at every scrape;
  - C{/}: one self-contained HTML page (inline CSS and SVG, no scripts, no
    external assets) with the keys' health, the pool, the entropy rate,
    the listeners, the clients and the upstreams;
  - C{/status.json}: the same data as the page, as JSON.

Everything shown is a count, a state or a name: never entropy, never key
material.  Everything read from the daemon that ends up in HTML (paths,
serials, peers, reasons, endpoint strings) is escaped.
"""

from __future__ import annotations

import html
import json
import time
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Site

from ekey.services.daemon import HISTORY, SAMPLE_INTERVAL
from ekey.core.session import KeyState

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

#: The per-key statistics exported as counters: (ekeydctl name, metric
#: name, help).
_KEY_COUNTERS = (
    ("ConnectionRekeys", "ekey_key_rekeys",
     "Session re-keys on the key's current connection."),
    ("ConnectionResets", "ekey_key_resets",
     "Resets of the key on its current connection."),
    ("MACFailures", "ekey_key_mac_failures",
     "Frames whose MAC did not verify, on the key's current connection."),
    ("FramingErrors", "ekey_key_framing_errors",
     "Framing errors on the key's current connection."),
    ("PacketErrors", "ekey_key_packet_errors",
     "Packets in error on the key's current connection."),
    ("TotalEntropy", "ekey_key_entropy_bytes",
     "Verified entropy bytes from the key on its current connection."),
    ("BytesRead", "ekey_key_read_bytes",
     "Bytes read from the key on its current connection."),
    ("HealthFIPSBlocks", "ekey_key_health_fips_blocks",
     "FIPS 140-2 blocks (20,000 bits) of the key's output tested by the host."),
    ("HealthFIPSFailures", "ekey_key_health_fips_failures",
     "FIPS 140-2 blocks of the key's output that failed the host's tests."),
)

#: The per-key readings exported as gauges: (ekeydctl name, metric name,
#: help).
_KEY_GAUGES = (
    ("KeyTemperatureK", "ekey_key_temperature_kelvin", "The key's temperature."),
    ("KeyVoltage", "ekey_key_voltage_volts", "The key's supply voltage."),
)


def stateName(words: str) -> str:
    """
    @param words: a key's state in words, as L{ekey.services.keys.KeyManager.describe}
        gives it (a L{KeyState} value).
    @return: its name for metrics, such as C{"running"} or
        C{"failed_health"}; C{"unknown"} for words that are no state.
    """
    try:
        return KeyState(words).name.lower()
    except ValueError:
        return "unknown"


def distinctListeners(daemon) -> List[Tuple[str, object]]:
    """
    The daemon's EGD listeners, one per factory: endpoints that share a
    factory (as C{twistd ekey} makes them) share its counters, so they are
    reported together, their descriptions joined by C{", "}, rather than
    counted once per endpoint.

    @return: C{(descriptions, factory)} pairs, in the order first given.
    """
    grouped: Dict[int, Tuple[List[str], object]] = {}
    for description, factory in daemon.listeners:
        grouped.setdefault(id(factory), ([], factory))[0].append(description)
    return [(", ".join(descriptions), factory) for descriptions, factory in grouped.values()]


def snapshot(daemon) -> Dict[str, object]:
    """
    Read everything the page, C{/status.json} and the metrics show, at
    once.

    @param daemon: an L{ekey.services.daemon.Daemon}.
    @return: a JSON-serialisable dictionary.
    """
    now = daemon.clock.seconds()
    keys = []
    for number in daemon.keys.numbers():
        description = dict(daemon.keys.describe(number))
        description["stateName"] = stateName(description["state"])
        description["statistics"] = daemon.keys.statistics(number, now)
        keys.append(description)
    listeners = []
    clients = []
    for description, factory in distinctListeners(daemon):
        listeners.append({
            "listener": description,
            "clients": len(factory.clients),
            "connections": factory.connections,
            "bytesServed": factory.bytesServed,
            "requests": dict(sorted(factory.requests.items())),
            "protocolErrors": factory.protocolErrors,
            "refused": getattr(factory, "refused", 0),
            "idleClosed": getattr(factory, "idleClosed", 0),
        })
        for client in sorted(factory.clients, key=lambda c: c.connectedAt):
            clients.append({
                "listener": description,
                "peer": client.peer,
                "identity": client.identity,
                "bytesServed": client.bytesServed,
                "requests": sum(client.requests.values()),
                "connectedFor": round(now - client.connectedAt, 1),
            })
    feeder = daemon.kernelFeeder
    kernel = None
    if feeder is not None:
        kernel = {"bytesFed": feeder.bytesFed, "feeds": feeder.feeds,
                  "lastError": feeder.lastError}
    return {
        "time": now,
        "uptime": round(now - daemon.startedAt, 1),
        "pool": daemon.poolStatus(),
        "keys": keys,
        "listeners": listeners,
        "clients": clients,
        "upstreams": daemon.upstreamStatus(),
        "kernel": kernel,
        "history": [[t, round(rate, 1)] for t, rate in daemon.history],
    }


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
        status = snapshot(self.daemon)
        yield from self._pool(status)
        yield from self._listeners(status)
        yield from self._keys(status)
        yield from self._upstreams(status)
        yield from self._kernel(status)

    def _pool(self, status):
        pool = status["pool"]
        yield GaugeMetricFamily("ekey_pool_level_bytes", "Entropy bytes in the pool.",
                                value=pool["level"])
        yield GaugeMetricFamily("ekey_pool_capacity_bytes", "Bytes the pool can hold.",
                                value=pool["capacity"])
        yield CounterMetricFamily("ekey_pool_in_bytes",
                                  "Bytes added to the pool (from keys and upstreams).",
                                  value=pool["bytesIn"])
        yield CounterMetricFamily("ekey_pool_out_bytes",
                                  "Bytes taken from the pool (by clients and sinks).",
                                  value=pool["bytesOut"])
        yield CounterMetricFamily("ekey_pool_refused_bytes",
                                  "Bytes refused because the pool was full.",
                                  value=pool["bytesRefused"])
        yield GaugeMetricFamily("ekey_pool_waiting_readers",
                                "Readers waiting for entropy (blocking reads and sinks).",
                                value=pool["waitingReaders"])
        if "refillAt" in pool:
            yield GaugeMetricFamily("ekey_pool_refill_at_bytes",
                                    "Level below which the relay pulls from its upstreams now "
                                    "(rises from the low watermark under heavy demand).",
                                    value=pool["refillAt"])
            yield CounterMetricFamily("ekey_pool_ran_dry_refills",
                                      "Refills from upstreams during which readers emptied the "
                                      "pool; a steady rise says the watermarks are small for "
                                      "the demand.", value=pool["ranDry"])
        yield GaugeMetricFamily("ekey_uptime_seconds", "Seconds since the daemon started.",
                                value=status["uptime"])

    def _listeners(self, status):
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
        for listener in status["listeners"]:
            value = [listener["listener"]]
            served.add_metric(value, listener["bytesServed"])
            clients.add_metric(value, listener["clients"])
            connections.add_metric(value, listener["connections"])
            errors.add_metric(value, listener["protocolErrors"])
            refused.add_metric(value, listener["refused"])
            idle.add_metric(value, listener["idleClosed"])
            for command, count in listener["requests"].items():
                requests.add_metric(value + [command], count)
        yield from (served, clients, connections, errors, refused, idle, requests)

    def _keys(self, status):
        labels = ["key", "path", "serial"]
        up = GaugeMetricFamily("ekey_key_up", "1 if the key is giving entropy, else 0.",
                               labels=labels)
        state = GaugeMetricFamily(
            "ekey_key_state", "1 for the state the key is in, 0 for every other.",
            labels=labels + ["state"])
        counters = [CounterMetricFamily(name, text, labels=labels)
                    for _, name, text in _KEY_COUNTERS]
        gauges = [GaugeMetricFamily(name, text, labels=labels)
                  for _, name, text in _KEY_GAUGES]
        for key in status["keys"]:
            value = [str(key["number"]), key["path"], key["serial"] or ""]
            up.add_metric(value, 1 if key["ok"] else 0)
            for name in KEY_STATES:
                state.add_metric(value + [name], 1 if name == key["stateName"] else 0)
            if key["stateName"] not in KEY_STATES:
                state.add_metric(value + [key["stateName"]], 1)
            statistics = key["statistics"]
            for (source, _, _), family in zip(_KEY_COUNTERS + _KEY_GAUGES, counters + gauges):
                if source in statistics:
                    family.add_metric(value, statistics[source])
        yield up
        yield state
        yield from counters
        yield from gauges

    def _upstreams(self, status):
        labels = ["upstream"]
        up = GaugeMetricFamily("ekey_upstream_up", "1 if the upstream is connected, else 0.",
                               labels=labels)
        pulled = CounterMetricFamily("ekey_upstream_pulled_bytes",
                                     "Bytes pulled from the upstream.", labels=labels)
        connections = CounterMetricFamily("ekey_upstream_connections",
                                          "Connections made to the upstream.", labels=labels)
        for upstream in status["upstreams"]:
            value = [upstream["upstream"]]
            up.add_metric(value, 1 if upstream["state"] == "up" else 0)
            pulled.add_metric(value, upstream["bytesPulled"])
            connections.add_metric(value, upstream["connections"])
        yield from (up, pulled, connections)

    def _kernel(self, status):
        kernel = status["kernel"]
        if kernel is None:
            return
        yield CounterMetricFamily("ekey_kernel_fed_bytes",
                                  "Bytes added to the kernel's random pool.",
                                  value=kernel["bytesFed"])
        yield CounterMetricFamily("ekey_kernel_feeds",
                                  "Successful additions to the kernel's random pool.",
                                  value=kernel["feeds"])


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


def _e(value) -> str:
    """
    @return: C{value} as text, escaped for HTML (text and attributes).
    """
    return html.escape("" if value is None else str(value), quote=True)


def _number(value) -> str:
    return f"{value:,}" if isinstance(value, int) else _e(value)


class _Numeric(str):
    """
    A table cell's HTML, to be right-aligned.
    """


def _table(headers: Sequence[str], rows: List[List[str]], empty: str) -> str:
    """
    @param rows: cells as HTML (already escaped); L{_Numeric} cells are
        right-aligned.
    """
    if not rows:
        return f'<p class="muted">{_e(empty)}</p>'
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for cell in row:
            if isinstance(cell, _Numeric):
                cells.append(f'<td class="n">{cell}</td>')
            else:
                cells.append(f"<td>{cell}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _stateClass(key) -> str:
    if key["ok"]:
        return "ok"
    try:
        stopped = KeyState(key["state"]).stopped
    except ValueError:
        stopped = True
    return "bad" if stopped else "wait"


def _poolBar(pool) -> str:
    capacity = max(pool["capacity"], 1)
    fraction = min(max(pool["level"] / capacity, 0.0), 1.0)
    width = 400
    filled = round(fraction * width, 1)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="22" role="img" '
        f'aria-label="pool {fraction:.0%} full">'
        f'<rect x="0" y="0" width="{width}" height="22" fill="#e4e4e4" stroke="#999"/>'
        f'<rect x="0" y="0" width="{filled}" height="22" fill="#3a8d3a"/>'
        f'<text x="6" y="15">{fraction:.1%}</text></svg>'
    )


def _chart(history: List[List[float]], now: float, span: float) -> str:
    """
    @param history: C{[time, bytes per second]} samples, oldest first.
    @param span: the seconds the chart covers, ending at C{now}.
    @return: an inline SVG line chart of the rate.
    """
    width, height, left, bottom, top = 600, 160, 56, 20, 10
    plotWidth, plotHeight = width - left - 8, height - top - bottom
    samples = [(t, rate) for t, rate in history if t >= now - span]
    peak = max([rate for _, rate in samples] + [0.0])
    scale = _niceCeiling(peak)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="entropy rate over the last {span / 60:g} minutes">',
        f'<rect x="{left}" y="{top}" width="{plotWidth}" height="{plotHeight}" '
        f'fill="#fff" stroke="#bbb"/>',
        f'<text x="{left - 4}" y="{top + 9}" text-anchor="end">{_e(_rate(scale))}</text>',
        f'<text x="{left - 4}" y="{top + plotHeight}" text-anchor="end">0</text>',
        f'<text x="{left}" y="{height - 4}">{span / 60:g} min ago</text>',
        f'<text x="{left + plotWidth}" y="{height - 4}" text-anchor="end">now</text>',
    ]
    if len(samples) >= 2:
        points = []
        for t, rate in samples:
            x = left + plotWidth * (1 - (now - t) / span)
            y = top + plotHeight * (1 - rate / scale)
            points.append(f"{x:.1f},{y:.1f}")
        parts.append(f'<polyline fill="none" stroke="#2a6fb0" stroke-width="2" '
                     f'points="{" ".join(points)}"/>')
    else:
        parts.append(f'<text x="{left + plotWidth / 2}" y="{top + plotHeight / 2}" '
                     f'text-anchor="middle">collecting samples…</text>')
    parts.append("</svg>")
    return "".join(parts)


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


def renderPage(status: Dict[str, object], span: float = 600.0) -> str:
    """
    The status page.

    @param status: from L{snapshot}.
    @param span: the seconds the rate chart covers.
    @return: a whole HTML document, with every value escaped.
    """
    keys = status["keys"]
    running = sum(1 for key in keys if key["ok"])
    keyRows = []
    for key in keys:
        stats = key["statistics"]
        celsius = stats.get("KeyTemperatureC")
        volts = stats.get("KeyVoltage")
        keyRows.append([
            _Numeric(_e(key["number"])),
            f"<code>{_e(key['path'])}</code>",
            f"<code>{_e(key['serial'])}</code>" if key["serial"] else
            '<span class="muted">unknown</span>',
            f'<span class="state {_stateClass(key)}">{_e(key["state"])}</span>',
            _e(key["reason"]),
            _Numeric(f"{celsius:.1f}&nbsp;°C" if isinstance(celsius, (int, float)) else "–"),
            _Numeric(f"{volts:.3f}&nbsp;V" if isinstance(volts, (int, float)) else "–"),
            _Numeric(_number(stats.get("TotalEntropy", "–"))),
            _Numeric(_number(stats.get("MACFailures", "–"))),
            _Numeric(_number(stats.get("HealthFIPSFailures", "–"))),
        ])
    pool = status["pool"]
    rate = pool.get("bytesPerSecond")
    listenerRows = [[
        f"<code>{_e(listener['listener'])}</code>",
        _Numeric(_number(listener["clients"])),
        _Numeric(_number(listener["connections"])),
        _Numeric(_number(listener["bytesServed"])),
        _e(", ".join(f"{name} {count}" for name, count in listener["requests"].items())),
        _Numeric(_number(listener["protocolErrors"])),
    ] for listener in status["listeners"]]
    clientRows = [[
        f"<code>{_e(client['peer'])}</code>",
        _e(client["identity"]) if client["identity"] else '<span class="muted">–</span>',
        f"<code>{_e(client['listener'])}</code>",
        _Numeric(_number(client["bytesServed"])),
        _Numeric(_number(client["requests"])),
        _Numeric(_e(_duration(client["connectedFor"]))),
    ] for client in status["clients"]]
    upstreamRows = [[
        f"<code>{_e(upstream['upstream'])}</code>",
        f'<span class="state {"ok" if upstream["state"] == "up" else "bad"}">'
        f'{_e(upstream["state"])}</span>',
        _Numeric(_number(upstream["bytesPulled"])),
        _Numeric(_number(upstream["connections"])),
        _e(upstream["lastError"]) if upstream["lastError"] else '<span class="muted">–</span>',
    ] for upstream in status["upstreams"]]
    kernel = status["kernel"]
    sections = [
        "<h2>Keys</h2>",
        _table(["#", "Path", "Serial", "State", "Reason", "Temperature", "Voltage",
                "Entropy (bytes)", "MAC failures", "FIPS failures"], keyRows, "No keys."),
        "<h2>Pool</h2>",
        _poolBar(pool),
        f"<p>{_number(pool['level'])} of {_number(pool['capacity'])} bytes; "
        f"in {_number(pool['bytesIn'])}, out {_number(pool['bytesOut'])}, "
        f"refused {_number(pool['bytesRefused'])}; "
        f"{_number(pool['waitingReaders'])} reader(s) waiting"
        + (f"; {_e(_rate(rate))} now" if rate is not None else "") + ".</p>",
        f"<h2>Entropy rate, last {span / 60:g} minutes</h2>",
        _chart(status["history"], status["time"], span),
        "<h2>EGD listeners</h2>",
        _table(["Endpoint", "Clients", "Connections", "Bytes served", "Requests",
                "Protocol errors"], listenerRows, "No EGD listeners."),
        "<h2>Clients</h2>",
        _table(["Peer", "Identity", "Listener", "Bytes served", "Requests", "Connected for"],
               clientRows, "No EGD clients connected."),
        "<h2>Upstreams</h2>",
        _table(["Upstream", "State", "Bytes pulled", "Connections", "Last error"],
               upstreamRows, "No upstreams."),
    ]
    if kernel is not None:
        sections += [
            "<h2>Kernel</h2>",
            f"<p>{_number(kernel['bytesFed'])} bytes fed in {_number(kernel['feeds'])} "
            f"additions" + (f"; last error: {_e(kernel['lastError'])}"
                            if kernel["lastError"] else "") + ".</p>",
        ]
    generated = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(status["time"]))
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>ekey status</title>",
        f"<style>{_STYLE}</style>",
        "</head><body>",
        "<h1>ekey</h1>",
        f'<p class="muted">{running} of {len(keys)} key(s) running; up '
        f"{_e(_duration(status['uptime']))}; {_e(generated)}. "
        '<a href="metrics">metrics</a> · <a href="status.json">status.json</a></p>',
        *sections,
        "</body></html>",
    ])


def makeSite(daemon, reactor=None) -> Site:
    """
    The daemon's web site: C{/} (the status page), C{/metrics}
    (Prometheus) and C{/status.json}.

    @param daemon: an L{ekey.services.daemon.Daemon}.
    @param reactor: an L{IReactorTime} for connection time-outs and the
        access log (default the daemon's clock).
    @return: a L{Site}, for any server endpoint.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaemonCollector(daemon))
    root = Resource()
    root.putChild(b"", GeneratedResource(
        "text/html; charset=utf-8",
        lambda: renderPage(snapshot(daemon), span=HISTORY * SAMPLE_INTERVAL).encode("utf-8"),
        {"content-security-policy": CONTENT_SECURITY_POLICY, "x-content-type-options": "nosniff"}))
    root.putChild(b"metrics", GeneratedResource(
        CONTENT_TYPE_LATEST, lambda: generate_latest(registry)))
    root.putChild(b"status.json", GeneratedResource(
        "application/json",
        lambda: json.dumps(snapshot(daemon), indent=2, sort_keys=True).encode("utf-8")))
    return Site(root, reactor=reactor if reactor is not None else daemon.clock)
