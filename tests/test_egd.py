"""
Tests for L{ekey.core.egd}: the EGD codec, both directions.
"""

from twisted.trial import unittest

from ekey.core.egd import (
    MAX_RUN,
    BlockingReadClient,
    EGDClientParser,
    EGDServerParser,
    GetLevel,
    GetPID,
    Read,
    ReadBlocking,
    ReadBlockingRun,
    Reply,
    Write,
    encodeLevel,
    encodePID,
    encodeRead,
    encodeRequest,
)
from ekey.core.errors import LocalProtocolError, RemoteProtocolError

ALL = [GetLevel(), Read(5), ReadBlocking(255), Write(800, b"\x01" * 100), GetPID(), Read(0)]


class ServerParserTests(unittest.TestCase):
    """
    Client bytes to commands.
    """

    def test_allCommandsPipelined(self):
        """
        All five commands, pipelined in one read, parse in order.
        """
        stream = b"".join(encodeRequest(c) for c in ALL)
        self.assertEqual(EGDServerParser().receiveData(stream), ALL)

    def test_byteByByte(self):
        """
        The same stream split into single bytes parses the same.
        """
        stream = b"".join(encodeRequest(c) for c in ALL)
        parser = EGDServerParser()
        out = []
        for i in range(len(stream)):
            out.extend(parser.receiveData(stream[i : i + 1]))
        self.assertEqual(out, ALL)
        self.assertEqual(parser.buffered, 0)

    def test_unknownCommand(self):
        """
        An unknown command byte is a remote protocol error, even after good
        commands.
        """
        parser = EGDServerParser()
        self.assertRaises(RemoteProtocolError, parser.receiveData, b"\x00\x05")
        self.assertRaises(RemoteProtocolError, EGDServerParser().receiveData, b"\xff")


    def test_coalescedRuns(self):
        """
        Asked to coalesce, the parser gives blocking reads that follow one
        another as one run (their total and their number); a lone blocking
        read, and every other command, come out as usual.
        """
        stream = (b"\x02\x20" * 5 + b"\x00" + b"\x02\x07" + b"\x01\x03"
                  + b"\x02\x01\x02\x02" + b"\x04")
        self.assertEqual(EGDServerParser(coalesce=True).receiveData(stream), [
            ReadBlockingRun(160, 5), GetLevel(), ReadBlocking(7), Read(3),
            ReadBlockingRun(3, 2), GetPID()])

    def test_coalescedRunSplit(self):
        """
        A run cut in the middle of a command ends at the last whole read;
        the rest comes with the next data.
        """
        parser = EGDServerParser(coalesce=True)
        self.assertEqual(parser.receiveData(b"\x02\x10\x02\x20\x02"),
                         [ReadBlockingRun(0x30, 2)])
        self.assertEqual(parser.buffered, 1)
        self.assertEqual(parser.receiveData(b"\x30\x02\x01\x00"),
                         [ReadBlockingRun(0x31, 2), GetLevel()])

    def test_coalescedRunLength(self):
        """
        A run stands for at most L{MAX_RUN} reads.
        """
        runs = EGDServerParser(coalesce=True).receiveData(b"\x02\xff" * (MAX_RUN + 3))
        self.assertEqual(runs, [ReadBlockingRun(255 * MAX_RUN, MAX_RUN), ReadBlockingRun(765, 3)])


class ClientParserTests(unittest.TestCase):
    """
    Server bytes to replies.
    """

    def test_replies(self):
        """
        Replies to pipelined requests, split anywhere, match them in order.
        """
        parser = EGDClientParser()
        for command in ALL:
            parser.sent(command)
        stream = (encodeLevel(4096) + encodeRead(b"abcde") + b"z" * 255 + encodePID(1234)
                  + encodeRead(b""))
        out = []
        for i in range(len(stream)):
            out.extend(parser.receiveData(stream[i : i + 1]))
        self.assertEqual(out, [
            Reply(ALL[0], 4096), Reply(ALL[1], b"abcde"), Reply(ALL[2], b"z" * 255),
            Reply(ALL[3], None), Reply(ALL[4], "1234"), Reply(ALL[5], b""),
        ])
        self.assertEqual(parser.outstanding, 0)

    def test_repliesInOneChunk(self):
        """
        Many replies arriving in one chunk, and in chunks cut at every
        size, give the same replies: the parser's offsets carry across
        replies and chunks.
        """
        commands = [ReadBlocking(224), Read(10), GetLevel(), ReadBlocking(3)] * 50
        stream = b"".join(
            bytes([i]) * 224 + encodeRead(bytes([i]) * 10) + encodeLevel(i) + b"abc"
            for i in range(50))
        whole = EGDClientParser()
        for command in commands:
            whole.sent(command)
        expected = whole.receiveData(stream)
        self.assertEqual(len(expected), 200)
        self.assertEqual(expected[4], Reply(ReadBlocking(224), b"\x01" * 224))
        self.assertEqual(expected[6], Reply(GetLevel(), 1))
        for size in (1, 7, 223, 225, 1000):
            parser = EGDClientParser()
            for command in commands:
                parser.sent(command)
            out = []
            for i in range(0, len(stream), size):
                out.extend(parser.receiveData(stream[i : i + size]))
            self.assertEqual(out, expected, f"chunks of {size}")
            self.assertEqual(parser.outstanding, 0)

    def test_unaskedBytes(self):
        """
        Bytes nobody asked for, or too many for a read, are remote errors.
        """
        self.assertRaises(RemoteProtocolError, EGDClientParser().receiveData, b"x")
        parser = EGDClientParser()
        parser.sent(Read(2))
        self.assertRaises(RemoteProtocolError, parser.receiveData, b"\x05abcde")

    def test_encodingLimits(self):
        """
        Counts over 255 or negative are local errors; levels saturate.
        """
        self.assertRaises(LocalProtocolError, encodeRequest, Read(256))
        self.assertRaises(LocalProtocolError, encodeRequest, ReadBlocking(-1))
        self.assertRaises(LocalProtocolError, encodeRequest, Write(70000, b""))
        self.assertRaises(LocalProtocolError, encodeRead, b"x" * 256)
        self.assertEqual(encodeLevel(2 ** 40), b"\xff\xff\xff\xff")
        self.assertEqual(encodePID("-1"), b"\x02-1")


class BlockingReadClientTests(unittest.TestCase):
    """
    A client of blocking reads only: requests out, owed bytes counted.
    """

    def test_requests(self):
        """
        A request for C{n} bytes is blocking reads of the read size and one
        of the rest, and every byte of it is owed.
        """
        client = BlockingReadClient(224)
        self.assertEqual(client.request(500), b"\x02\xe0\x02\xe0\x02\x34")
        self.assertEqual(client.request(224), b"\x02\xe0")
        self.assertEqual(client.request(0), b"")
        self.assertEqual(client.owed, 724)
        self.assertEqual(BlockingReadClient().request(256), b"\x02\xff\x02\x01")

    def test_bytesAsTheyArrive(self):
        """
        Owed bytes are handed back as they arrive, however cut, and the
        count of what is owed falls with them.
        """
        client = BlockingReadClient(224)
        client.request(300)
        self.assertEqual(client.receiveData(b"a" * 100), b"a" * 100)
        self.assertEqual(client.receiveData(b"b" * 200), b"b" * 200)
        self.assertEqual(client.owed, 0)

    def test_unaskedBytes(self):
        """
        More bytes than were asked for are a remote error, and none of the
        chunk is counted.
        """
        client = BlockingReadClient()
        self.assertRaises(RemoteProtocolError, client.receiveData, b"x")
        client.request(10)
        self.assertRaises(RemoteProtocolError, client.receiveData, b"x" * 11)
        self.assertEqual(client.owed, 10)

    def test_badSizes(self):
        """
        A read size outside 1-255, or a negative request, is a local error.
        """
        self.assertRaises(LocalProtocolError, BlockingReadClient, 0)
        self.assertRaises(LocalProtocolError, BlockingReadClient, 256)
        self.assertRaises(LocalProtocolError, BlockingReadClient().request, -1)
