"""
Tests for L{ekey.egd}: the EGD codec, both directions.
"""

from twisted.trial import unittest

from ekey.egd import (
    EGDClientParser,
    EGDServerParser,
    GetLevel,
    GetPID,
    Read,
    ReadBlocking,
    Reply,
    Write,
    encodeLevel,
    encodePID,
    encodeRead,
    encodeRequest,
)
from ekey.frames import LocalProtocolError, RemoteProtocolError

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
