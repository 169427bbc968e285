"""
Property-based tests (hypothesis) of the parsers, the key session and the
pool: whatever arrives, they never crash, never output what was not
verified, and never hand out a byte twice.
"""

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from ekey.core.egd import EGDServerParser, ReadBlocking, ReadBlockingRun, encodeRequest
from ekey.core.errors import RemoteProtocolError
from ekey.core.frames import FRAME_LENGTH, FrameReader
from ekey.core.pool import EntropyPool
from ekey.core.session import EntropyReceived
from tests.vectors import deviceFrames, entropyFrame, transcriptSession

FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


def chunked(data, cuts):
    """
    Split C{data} at the given (sorted, deduplicated) offsets.
    """
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in points:
        pieces.append(data[last:p])
        last = p
    pieces.append(data[last:])
    return pieces


class FrameReaderFuzz(unittest.TestCase):
    """
    The frame reader on arbitrary streams.
    """

    @FUZZ
    @given(st.binary(max_size=2000), st.lists(st.integers(0, 2000), max_size=20))
    def test_anyStream(self, data, cuts):
        """
        Any bytes, cut anywhere, give only well-framed 64-byte frames, never
        an exception, and the reader never holds more than a frame.
        """
        reader = FrameReader()
        for piece in chunked(data, cuts):
            for frame in reader.receiveData(piece):
                self.assertEqual(len(frame), FRAME_LENGTH)
                self.assertEqual(frame[:2], b"* ")
                self.assertEqual(frame[-2:], b"\r\n")
            self.assertLessEqual(len(reader._buffer), FRAME_LENGTH)
        self.assertEqual(reader.bytesRead, len(data))

    @FUZZ
    @given(st.lists(st.binary(max_size=80), max_size=10))
    def test_framesSurviveGarbage(self, garbage):
        """
        Good frames separated by garbage without C{*} all come through.
        """
        frames = deviceFrames()
        stream = b""
        for i, frame in enumerate(frames):
            junk = garbage[i % len(garbage)].replace(b"*", b"") if garbage else b""
            stream += junk + frame
        self.assertEqual(FrameReader().receiveData(stream), frames)


class SessionFuzz(unittest.TestCase):
    """
    The key session on arbitrary input.
    """

    @FUZZ
    @given(st.binary(max_size=3000), st.lists(st.integers(0, 3000), max_size=20))
    def test_randomBytesYieldNothing(self, data, cuts):
        """
        Random bytes never raise and never yield entropy (a MAC cannot be
        guessed).
        """
        session = transcriptSession()
        for piece in chunked(data, cuts):
            for event in session.receiveData(piece):
                self.assertNotIsInstance(event, EntropyReceived)
            session.dataToSend()

    @FUZZ
    @given(st.lists(st.tuples(st.integers(0, 4095), st.sampled_from(
        ["good", "badmac", "flip", "truncate", "zero-key", "garbage"])), max_size=40))
    def test_onlyVerifiedFramesYieldEntropy(self, plan):
        """
        In any sequence of good, corrupted, truncated, zero-key and garbage
        frames, every block that comes out is the plaintext of a good frame,
        in order, each at most once.
        """
        session = transcriptSession()
        good = []
        out = []
        for sequence, kind in plan:
            plaintext = os.urandom(32)
            frame = entropyFrame(sequence, plaintext)
            if kind == "good":
                good.append(plaintext)
            elif kind == "badmac":
                frame = frame[:56] + (b"A" if frame[56:57] != b"A" else b"B") + frame[57:]
            elif kind == "flip":
                frame = frame[:20] + bytes([frame[20] ^ 1]) + frame[21:]
            elif kind == "truncate":
                frame = frame[:40]
            elif kind == "zero-key":
                frame = entropyFrame(sequence, plaintext, key=bytes(32))
            else:
                frame = os.urandom(64)
            for event in session.receiveData(frame):
                if isinstance(event, EntropyReceived):
                    out.append(event.data)
            session.dataToSend()
        self.assertEqual(len(set(out)), len(out))
        positions = [good.index(block) for block in out]
        self.assertEqual(positions, sorted(positions))


class KeyPipelineFuzz(unittest.TestCase):
    """
    The key pipeline under any interleaving of reads and changes of room.
    """

    @settings(FUZZ, max_examples=30)
    @given(st.lists(st.one_of(st.tuples(st.just("read"), st.integers(1, 30)),
                              st.tuples(st.just("room"), st.integers(0, 4000))),
                    max_size=15))
    def test_neverBeyondRoom(self, plan):
        """
        Entropy never comes out beyond the room last given, always in whole
        blocks and in order; once there is room for everything, everything
        read comes out, once.
        """
        from ekey.core.keypipeline import KeyPipeline
        from ekey.core.units import BLOCK_SIZE

        class PassThrough:
            failure = None

            def feed(self, data):
                return [data]

            def streamEnded(self):
                return 0

        frames, blocks = _pipelineFrames()
        pipeline = KeyPipeline(transcriptSession(), PassThrough(), room=0)
        read, out, room = 0, b"", 0
        for action, value in plan:
            if action == "read":
                pipeline.receiveData(b"".join(frames[read:read + value]), 0)
                read += value
            else:
                room = value
                pipeline.roomChanged(room, 0)
            data = pipeline.takeEntropy()
            self.assertLessEqual(len(data), room)
            self.assertEqual(len(data) % BLOCK_SIZE, 0)
            room -= len(data)
            out += data
        pipeline.roomChanged(None, 0)
        out += pipeline.takeEntropy()
        self.assertEqual(out, b"".join(blocks[:read]))


def _pipelineFrames(_cache=[]):
    # 450 entropy frames under the transcript's session key (sequences 0 to
    # 449) and their blocks, made once: making frames is slow.
    if not _cache:
        blocks = [os.urandom(32) for _ in range(450)]
        _cache.append(([entropyFrame(i, b) for i, b in enumerate(blocks)], blocks))
    return _cache[0]


class EGDParserFuzz(unittest.TestCase):
    """
    The EGD server parser on arbitrary input.
    """

    @FUZZ
    @given(st.binary(max_size=600), st.lists(st.integers(0, 600), max_size=10))
    def test_anyBytes(self, data, cuts):
        """
        Any bytes give commands or a remote protocol error, never another
        exception; the commands re-encode to exactly the bytes consumed.
        """
        parser = EGDServerParser()
        commands = []
        try:
            for piece in chunked(data, cuts):
                commands.extend(parser.receiveData(piece))
        except RemoteProtocolError:
            return
        encoded = b"".join(encodeRequest(c) for c in commands)
        self.assertEqual(encoded + parser._buffer, data)

    @FUZZ
    @given(st.lists(st.sampled_from([b"\x00", b"\x04", b"\x01\x05", b"\x02\x00", b"\x02\x20",
                                     b"\x02\xff", b"\x03\x00\x08\x01\x00"]), max_size=200),
           st.lists(st.integers(0, 700), max_size=10))
    def test_coalescedSameAsPlain(self, pieces, cuts):
        """
        However a valid stream is cut, coalescing only merges blocking reads
        that follow one another: with neighbouring blocking reads merged on
        both sides, the coalescing parser's commands are the plain parser's,
        in bytes and in number of reads.
        """
        data = b"".join(pieces)
        plain = EGDServerParser().receiveData(data)
        parser = EGDServerParser(coalesce=True)
        coalesced = []
        for piece in chunked(data, cuts):
            coalesced.extend(parser.receiveData(piece))
        self.assertEqual(parser.buffered, 0)
        expanded = []
        for command in coalesced:
            if isinstance(command, ReadBlockingRun):
                self.assertGreaterEqual(command.count, 2)
                expanded.append(("blocking", command.n, command.count))
            elif isinstance(command, ReadBlocking):
                expanded.append(("blocking", command.n, 1))
            else:
                expanded.append(command)
        # Merge adjacent blocking reads on both sides, then compare.
        def merged(items):
            out = []
            for item in items:
                if (isinstance(item, tuple) and out and isinstance(out[-1], tuple)):
                    out[-1] = ("blocking", out[-1][1] + item[1], out[-1][2] + item[2])
                else:
                    out.append(item)
            return out
        plainItems = [("blocking", c.n, 1) if isinstance(c, ReadBlocking) else c for c in plain]
        self.assertEqual(merged(expanded), merged(plainItems))


class PoolFuzz(unittest.TestCase):
    """
    The pool under random interleavings of its operations.
    """

    @FUZZ
    @given(st.integers(1, 500), st.lists(st.tuples(
        st.sampled_from(["add", "take", "request", "cancel", "pause", "resume", "poll",
                         "unpoll"]),
        st.integers(0, 300)), max_size=80))
    def test_noByteTwice(self, capacity, operations):
        """
        Everything handed out, by takes and deliveries in the order they
        happen and with or without readers' shares, is exactly the start of
        what was accepted: no byte twice, none skipped, in order; the pool
        never holds more than its capacity, nor reserves more than it holds.
        """
        pool = EntropyPool(capacity)
        accepted = bytearray()
        served = bytearray()
        readers = []
        pollers = []
        for operation, n in operations:
            if operation == "add":
                data = os.urandom(n)
                accepted += data[: pool.add(data)]
            elif operation == "take":
                served += pool.take(n, pollers[n % len(pollers)] if pollers and n % 2 else None)
            elif operation == "request":
                share = pollers[n % len(pollers)] if pollers and n % 3 == 0 else None
                readers.append(pool.request(n or None, served.extend, quantum=1 + n % 40,
                                            share=share))
            elif operation == "cancel" and readers:
                readers.pop(n % len(readers)).cancel()
            elif operation == "pause" and readers:
                readers[n % len(readers)].pause()
            elif operation == "resume" and readers:
                readers[n % len(readers)].resume()
            elif operation == "poll":
                pollers.append(pool.addShare())
            elif operation == "unpoll" and pollers:
                pollers.pop(n % len(pollers)).remove()
            self.assertLessEqual(pool.level, capacity)
            self.assertLessEqual(pool.reserved, pool.level)
            self.assertEqual(pool.reserved, sum(share.reserved for share in pollers))
            self.assertEqual(bytes(served), bytes(accepted[: len(served)]))
            self.assertEqual(len(accepted) - len(served), pool.level)
