"""
Tests for L{ekey.core.egdsession.EGDServerSession}, with no Twisted at all:
bytes and times in, replies, reading requests, deadlines and closes out.
"""

import unittest

from ekey.core.egdsession import (
    ACTIVE_WINDOW,
    MAX_QUEUED_COMMANDS,
    CloseReason,
    EGDCounters,
    EGDServerSession,
    SessionState,
)
from ekey.core.pool import EntropyPool
from ekey.core.ratelimit import RateLimiter


class RecordingOutput:
    """
    A L{SessionOutput} that remembers what it was asked, and answers
    L{wake} as a connection would, by ticking the session at once.
    """

    def __init__(self):
        self.writes = []
        self.reading = []
        self.closed = []
        self.offers = 0
        self.wakes = 0
        self.session = None
        self.now = 0.0

    def writeReply(self, data):
        self.writes.append(data)

    def setReading(self, reading):
        self.reading.append(reading)

    def wake(self):
        self.wakes += 1
        self.session.tick(self.now)

    def closeSession(self, reason, detail):
        self.closed.append((reason, detail))

    def entropyOffered(self):
        self.offers += 1

    def value(self):
        return b"".join(self.writes)


class CountingPool(EntropyPool):
    """
    A pool that counts its takes and requests.
    """

    takes = 0
    requests = 0

    def take(self, n, share=None):
        self.takes += 1
        return super().take(n, share)

    def request(self, *args, **kwargs):
        self.requests += 1
        return super().request(*args, **kwargs)


class SessionTests(unittest.TestCase):
    """
    One client's conversation, sans-I/O.
    """

    def setUp(self):
        self.pool = CountingPool(1 << 16)
        self.output = RecordingOutput()

    def session(self, key="addr:10.0.0.1", now=0.0, **kwargs):
        session = EGDServerSession(self.output, self.pool, key, now, pid=4242, **kwargs)
        self.output.session = session
        return session

    def test_commandsInOrder(self):
        """
        Level, non-blocking read, write, blocking read and PID are answered
        in order; offered entropy is discarded and said once; every command
        is counted in the session and in the shared totals.
        """
        totals = EGDCounters()
        session = self.session(totals=totals)
        self.pool.add(b"0123456789")
        session.receiveData(b"\x00\x01\x04\x03\x00\x40\x02xy\x03\x00\x40\x01z\x02\x03\x04",
                            now=1.0)
        self.assertEqual(self.output.writes,
                         [(80).to_bytes(4, "big"), b"\x040123", b"456", b"\x044242"])
        self.assertEqual(self.output.offers, 1)
        self.assertEqual(self.pool.level, 3)
        self.assertEqual(session.state, SessionState.IDLE)
        self.assertEqual(session.counters.bytesServed, 7)
        self.assertEqual(dict(session.counters.requests),
                         {"GetLevel": 1, "Read": 1, "Write": 2, "ReadBlocking": 1, "GetPID": 1})
        self.assertEqual(totals.requests, session.counters.requests)
        self.assertEqual(totals.bytesServed, 7)

    def test_splitCommands(self):
        """
        A command split across receives is answered once it is complete.
        """
        session = self.session()
        self.pool.add(b"abcd")
        session.receiveData(b"\x01", now=0)
        self.assertEqual(self.output.writes, [])
        session.receiveData(b"\x04", now=0)
        self.assertEqual(self.output.writes, [b"\x04abcd"])

    def test_runAnsweredWithOneTakeAndOneWrite(self):
        """
        Blocking reads pipelined back to back that the pool can answer now
        are served with one take from the pool and one write, and leave the
        session idle; the pool is never asked to wait.
        """
        session = self.session()
        data = bytes(range(256)) * 8
        self.pool.add(data)
        session.receiveData(b"\x02\xff" * 8, now=0)
        self.assertEqual(self.output.writes, [data[:8 * 255]])
        self.assertEqual((self.pool.takes, self.pool.requests), (1, 0))
        self.assertEqual(session.counters.requests["ReadBlocking"], 8)
        self.assertEqual(session.state, SessionState.IDLE)

    def test_runSplitByParserServedAsOne(self):
        """
        A run longer than the parser gathers in one command (two runs back
        to back in the queue) is still one take and one write when the pool
        holds it all.
        """
        session = self.session()
        self.pool.add(b"q" * 3000)
        session.receiveData(b"\x02\x01" * 2000, now=0)
        self.assertEqual(self.output.writes, [b"q" * 2000])
        self.assertEqual(self.pool.takes, 1)

    def test_blockingReadWaitsForThePool(self):
        """
        A blocking read the pool cannot answer takes what there is, waits
        (state blocking, reading on) for the rest, and holds back later
        commands; when the pool completes it, the session asks to be woken
        and answers what was held back.
        """
        session = self.session()
        self.pool.add(b"a" * 10)
        session.receiveData(b"\x02\x20\x00", now=0)
        self.assertEqual(self.output.writes, [b"a" * 10])
        self.assertIs(session.state, SessionState.BLOCKING)
        self.pool.add(b"b" * 30)
        self.assertEqual(self.output.wakes, 1)
        self.assertEqual(self.output.value(), b"a" * 10 + b"b" * 22 + (64).to_bytes(4, "big"))
        self.assertIs(session.state, SessionState.IDLE)

    def test_rateWait(self):
        """
        A blocking read over the client's rate waits in state rate-wait
        until the deadline it names, then carries on.
        """
        session = self.session(limiter=RateLimiter(rate=100, burst=100))
        self.pool.add(b"r" * 1000)
        session.receiveData(b"\x02\xfa", now=10.0)
        self.assertEqual(len(self.output.value()), 100)
        self.assertIs(session.state, SessionState.RATE_WAIT)
        self.assertEqual(session.deadline, 11.0)
        session.tick(10.5)
        self.assertEqual(len(self.output.value()), 100)
        session.tick(11.0)
        self.assertEqual(len(self.output.value()), 200)
        self.assertEqual(session.deadline, 11.5)
        session.tick(11.5)
        self.assertEqual(self.output.value(), b"r" * 250)
        self.assertIs(session.state, SessionState.IDLE)

    def test_pausedTakesNothing(self):
        """
        While paused, the session reads no requests and takes nothing from
        the pool; on resume it carries on.
        """
        session = self.session()
        session.pause()
        self.assertIs(session.state, SessionState.PAUSED)
        self.assertEqual(self.output.reading, [False])
        session.receiveData(b"\x02\xff\x02\xff", now=0)
        self.pool.add(b"p" * 1000)
        self.assertEqual(self.output.writes, [])
        self.assertEqual(self.pool.level, 1000)
        session.resume(now=1)
        self.assertEqual(self.output.value(), b"p" * 510)
        self.assertEqual(self.output.reading, [False, True])
        self.assertIs(session.state, SessionState.IDLE)

    def test_pausedDuringBlockingRead(self):
        """
        A pause while a blocking read waits for the pool keeps the pool's
        bytes for others until the client reads again.
        """
        session = self.session()
        session.receiveData(b"\x02\x40", now=0)
        session.pause()
        self.pool.add(b"x" * 64)
        self.assertEqual(self.output.writes, [])
        session.resume(now=0.5)
        self.assertEqual(self.output.value(), b"x" * 64)
        self.assertIs(session.state, SessionState.IDLE)

    def test_protocolError(self):
        """
        An unknown command closes the session at once, pipelined commands
        before it unanswered; later bytes are ignored.
        """
        session = self.session()
        session.receiveData(b"\x00\x09", now=0)
        self.assertIs(session.state, SessionState.CLOSED)
        self.assertEqual(self.output.writes, [])
        self.assertEqual(self.output.closed,
                         [(CloseReason.PROTOCOL_ERROR, "unknown EGD command 0x09")])
        session.receiveData(b"\x00", now=0)
        self.assertEqual(self.output.writes, [])

    def test_idleTimeout(self):
        """
        The idle deadline moves with every request; at it, the session
        closes; a client waiting on a blocking read has no idle deadline.
        """
        session = self.session(idleTimeout=30, now=0.0)
        self.assertEqual(session.deadline, 30.0)
        session.receiveData(b"\x00", now=20.0)
        self.assertEqual(session.deadline, 50.0)
        session.receiveData(b"\x02\x10", now=25.0)
        session.tick(200.0)
        self.assertIs(session.state, SessionState.BLOCKING)
        self.output.now = 300.0
        self.pool.add(b"i" * 16)
        session.tick(329.0)
        self.assertEqual(self.output.closed, [])
        session.tick(330.0)
        self.assertEqual(self.output.closed, [(CloseReason.IDLE, "sent no request for 30 s")])
        self.assertIs(session.state, SessionState.CLOSED)

    def test_activeShareExpires(self):
        """
        A client that read holds a share of arrivals for L{ACTIVE_WINDOW}
        seconds, kept while it waits on a blocking read, and given back
        when it goes quiet.
        """
        session = self.session()
        session.receiveData(b"\x01\x00", now=0.0)
        self.assertEqual(session.deadline, ACTIVE_WINDOW)
        self.pool.add(b"s" * 64)
        self.assertEqual(self.pool.reserved, 64)
        session.receiveData(b"\x02\xff", now=0.5)
        session.tick(ACTIVE_WINDOW + 5)
        self.assertEqual(session.deadline, 2 * ACTIVE_WINDOW + 5)
        self.pool.add(b"t" * 300)
        self.output.now = 6.5
        session.tick(6.5)
        self.assertIs(session.state, SessionState.IDLE)
        session.tick(6.5 + ACTIVE_WINDOW)
        self.assertIsNone(session.deadline)
        self.assertEqual(self.pool.reserved, 0)

    def test_queueAndPendingBounded(self):
        """
        Reading stops when the commands queued behind a blocking read reach
        L{MAX_QUEUED_COMMANDS}, or the bytes asked for reach the cap, and
        resumes when they are served.
        """
        session = self.session(maxPendingBytes=1000)
        session.receiveData(b"\x02\x01" + b"\x00" * MAX_QUEUED_COMMANDS, now=0)
        self.assertEqual(self.output.reading, [False])
        self.pool.add(b"!")
        self.assertEqual(self.output.reading, [False, True])
        session.receiveData(b"\x02\xff" * 4, now=0)
        self.assertEqual(session.outstanding, 1020)
        self.assertEqual(self.output.reading, [False, True, False])
        self.pool.add(b"." * 1020)
        self.assertEqual(self.output.reading, [False, True, False, True])

    def test_closeLeavesBytesAndRate(self):
        """
        A session closed while waiting leaves undelivered bytes in the pool
        and gives back to its identity's rate what it drew ahead.
        """
        limiter = RateLimiter(rate=1, burst=100)
        session = self.session(limiter=limiter)
        self.pool.request(None, lambda data: None)
        session.receiveData(b"\x02\x50", now=0)
        self.assertEqual(limiter.available("addr:10.0.0.1", 0), 20)
        session.close(now=0)
        self.assertIs(session.state, SessionState.CLOSED)
        self.assertEqual(self.pool.waiting, 1)
        self.assertEqual(limiter.available("addr:10.0.0.1", 0), 100)

    def test_sharesByIdentity(self):
        """
        An identity's sessions split its part of the pool between them:
        two sessions of one identity get together what a single session of
        another identity gets.
        """
        outputs = [RecordingOutput() for _ in range(3)]
        sessions = [EGDServerSession(output, self.pool, key, 0)
                    for output, key in zip(outputs, ("uid:1000", "uid:1000", "uid:1001"))]
        for session in sessions:
            session.receiveData(b"\x01\x00", now=0)
        self.pool.add(b"z" * 640)
        self.assertEqual(self.pool.reserved, 640)
        for session in sessions:
            session.receiveData(b"\x01\xff", now=0)
        self.assertEqual([len(output.value()) for output in outputs], [2 + 160, 2 + 160, 2 + 255])

    def test_closedWhileRequesting(self):
        """
        A session closed by its own write (the connection went away while
        the pool delivered its share) leaves no request behind: later
        arrivals go to other readers, none is taken and dropped.
        """
        session = self.session()
        session.receiveData(b"\x01\x00", now=0)
        other = []
        self.pool.request(None, other.append)
        self.pool.add(b"a" * 128)
        self.assertEqual(len(b"".join(other)), 64)

        def closeOnWrite(data):
            self.output.writes.append(data)
            session.close(now=0)

        self.output.writeReply = closeOnWrite
        session.receiveData(b"\x02\x80", now=0)
        self.assertEqual(self.output.writes, [b"\x00", b"a" * 64])
        self.assertIs(session.state, SessionState.CLOSED)
        self.assertEqual(self.pool.waiting, 1)
        self.pool.add(b"b" * 64)
        self.assertEqual(b"".join(other), b"a" * 64 + b"b" * 64)

    def test_pauseAndResumeInsideWrite(self):
        """
        A transport may pause and resume its producer from inside a write:
        the session carries on in order, with the time it was given.
        """
        session = self.session()
        self.pool.add(b"abcdefgh")
        record = self.output.writeReply
        bounced = []

        def bounce(data):
            record(data)
            if not bounced:
                bounced.append(data)
                session.pause()
                session.resume(now=5.0)

        self.output.writeReply = bounce
        session.receiveData(b"\x01\x04\x01\x04\x00", now=5.0)
        self.assertEqual(self.output.writes, [b"\x04abcd", b"\x04efgh", bytes(4)])
        self.assertEqual(self.output.reading, [False, True])
        self.assertEqual(session.deadline, 5.0 + ACTIVE_WINDOW)
