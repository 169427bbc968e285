"""
Tests for L{tests.interop.seeded.traceServed}, the check the interop
tests rely on to say that served bytes are a simulated key's, each once,
in order: it must reject what a daemon that invents, repeats or reorders
entropy would serve.
"""

import os
import random

from twisted.trial.unittest import FailTest, TestCase

from ekey.services.simulator import seededBlock
from tests.interop.seeded import (
    Piece,
    SeededStreams,
    indicesOf,
    positionOf,
    seededPlaintext,
    traceServed,
)

SEED = b"test-seeded"
OTHER = b"test-seeded-other"

# Small streams keep the tests fast; what they trace lies well inside.
LIMIT = 4096


def trace(served, seeds=(SEED,), ordered=True):
    return traceServed(served, list(seeds), ordered=ordered, limit=LIMIT)


class AcceptTests(TestCase):
    """
    Genuine streams, as a first-in first-out pool hands them out, pass.
    """

    def test_wholeStream(self):
        """
        One client's whole blocks from the start are traced to their
        indices, each whole.
        """
        [pieces] = trace([seededPlaintext(SEED, 100)])
        self.assertEqual(indicesOf(pieces), list(range(100)))
        self.assertTrue(all(piece.whole for piece in pieces))

    def test_gaps(self):
        """
        Blocks the host never took (refused, corrupted) leave gaps, which
        are allowed: each remaining block is still once and in order.
        """
        data = seededPlaintext(SEED, 10) + seededPlaintext(SEED, 10, 50)
        [pieces] = trace([data])
        self.assertEqual(indicesOf(pieces), list(range(10)) + list(range(50, 60)))

    def test_clientsSplitAtAnyOffset(self):
        """
        Three clients taking turns of 255 bytes (not whole blocks) from one
        stream are traced, the blocks split between them included, and
        together they cover every byte of the stream exactly once.
        """
        stream = seededPlaintext(SEED, 3 * 255 * 4 // 32 + 1)
        served = [b"", b"", b""]
        for turn, offset in enumerate(range(0, len(stream), 255)):
            served[turn % 3] += stream[offset:offset + 255]
        traced = trace(served)
        covered = sum(piece.end - piece.start for pieces in traced for piece in pieces)
        self.assertEqual(covered, len(stream))
        self.assertTrue(any(not piece.whole for piece in traced[1]))

    def test_startsAndEndsInsideBlocks(self):
        """
        A client whose bytes begin with the end of a block and end with the
        start of one (a read that began and one that ended inside blocks)
        is traced, the part-blocks included.
        """
        data = seededPlaintext(SEED, 6)[20:-7]
        [pieces] = trace([data])
        self.assertEqual(pieces[0], Piece(SEED, 0, 20, 32, 0, 0))
        self.assertEqual(pieces[-1], Piece(SEED, 5, 0, 25, 0, len(data) - 25))

    def test_truncatedBlock(self):
        """
        A pool that accepted only the start of a block (it was nearly full)
        and then the next chunk serves the part-block followed by later
        whole blocks: traced.
        """
        data = seededPlaintext(SEED, 3) + seededBlock(SEED, 3)[:11] + seededPlaintext(SEED, 3, 9)
        [pieces] = trace([data])
        self.assertEqual(pieces[3], Piece(SEED, 3, 0, 11, 0, 96))
        self.assertEqual(indicesOf(pieces), [0, 1, 2, 3, 9, 10, 11])

    def test_severalKeys(self):
        """
        Blocks of two keys interleaved in one client's bytes are traced to
        their own keys, each key's in order.
        """
        data = (seededPlaintext(SEED, 2) + seededPlaintext(OTHER, 3)
                + seededPlaintext(SEED, 2, 2) + seededPlaintext(OTHER, 1, 3))
        [pieces] = trace([data], seeds=(SEED, OTHER))
        self.assertEqual([(piece.seed, piece.index) for piece in pieces],
                         [(SEED, 0), (SEED, 1), (OTHER, 0), (OTHER, 1), (OTHER, 2),
                          (SEED, 2), (SEED, 3), (OTHER, 3)])

    def test_unorderedWhenAllowed(self):
        """
        Without C{ordered} (ekeyd serves the newest blocks first), blocks in
        any order pass, as long as each is whole and once.
        """
        data = b"".join(seededBlock(SEED, i) for i in (5, 4, 3, 9, 0))
        [pieces] = trace([data], ordered=False)
        self.assertEqual(indicesOf(pieces), [5, 4, 3, 9, 0])


class RejectTests(TestCase):
    """
    What a broken daemon would serve fails the check.
    """

    def test_randomBytes(self):
        """
        Random bytes, 64 at a time (where the fragment matching that this
        replaced accepted 50 of 50), are rejected every time.
        """
        for _ in range(50):
            self.assertRaises(FailTest, trace, [os.urandom(64)])

    def test_randomBytesBetweenBlocks(self):
        """
        A random block among genuine ones is rejected, and so is a random
        part-block between whole blocks.
        """
        stream = seededPlaintext(SEED, 8)
        self.assertRaises(FailTest, trace, [stream[:128] + os.urandom(32) + stream[128:]])
        self.assertRaises(FailTest, trace, [stream[:128] + os.urandom(5) + stream[160:]])

    def test_shortRandomBytes(self):
        """
        Fewer than 32 random bytes are not a block and are rejected.
        """
        for size in (1, 4, 16, 31):
            self.assertRaises(FailTest, trace, [os.urandom(size)])

    def test_repeatedBlockOneClient(self):
        """
        A block served twice to one client is rejected, ordered or not.
        """
        data = seededPlaintext(SEED, 5) + seededBlock(SEED, 4)
        self.assertRaises(FailTest, trace, [data])
        self.assertRaises(FailTest, trace, [data], ordered=False)

    def test_repeatedBlockTwoClients(self):
        """
        A block served to two clients is rejected.
        """
        self.assertRaises(FailTest, trace,
                          [seededPlaintext(SEED, 5), seededPlaintext(SEED, 3, 4)])

    def test_streamServedTwice(self):
        """
        A stream whose 2 KiB are served twice over (which the fragment
        matching accepted) is rejected.
        """
        stream = seededPlaintext(SEED, 64)
        self.assertRaises(FailTest, trace, [stream + stream])
        self.assertRaises(FailTest, trace, [stream, stream])

    def test_overlappingParts(self):
        """
        Two clients that got overlapping parts of one block (some bytes
        twice) are rejected.
        """
        stream = seededPlaintext(SEED, 10)
        self.assertRaises(FailTest, trace, [stream[:100], stream[90:]])

    def test_swappedBlocks(self):
        """
        Two blocks swapped, where order is claimed, are rejected.
        """
        data = b"".join(seededBlock(SEED, i) for i in (0, 1, 3, 2, 4))
        self.assertRaises(FailTest, trace, [data])

    def test_unknownSeed(self):
        """
        A genuine block of a key that is not among the seeds is rejected.
        """
        data = seededPlaintext(SEED, 3) + seededBlock(OTHER, 3) + seededPlaintext(SEED, 2, 3)
        self.assertRaises(FailTest, trace, [data])
        self.assertRaises(FailTest, trace, [data], ordered=False)

    def test_misalignedUnordered(self):
        """
        Without C{ordered}, bytes that are not whole blocks from the first
        byte are rejected: a server serving newest first gives no context
        for part-blocks.
        """
        self.assertRaises(FailTest, trace, [seededPlaintext(SEED, 4)[5:]], ordered=False)

    def test_partOfWrongBlock(self):
        """
        Part of a block that is not between the client's neighbouring whole
        blocks (bytes from elsewhere in the stream: out of order) is
        rejected; so are parts of blocks between them in the wrong order.
        """
        data = seededPlaintext(SEED, 3) + seededBlock(SEED, 12)[:20] + seededPlaintext(SEED, 2, 9)
        self.assertRaises(FailTest, trace, [data])
        data = seededPlaintext(SEED, 3) + seededBlock(SEED, 1)[5:20] + seededPlaintext(SEED, 2, 9)
        self.assertRaises(FailTest, trace, [data])
        data = (seededPlaintext(SEED, 3) + seededBlock(SEED, 6)[:20] + seededBlock(SEED, 4)[20:]
                + seededPlaintext(SEED, 2, 9))
        self.assertRaises(FailTest, trace, [data])

    def test_fragmentedTurns(self):
        """
        A client whose reads got runs of the stream shorter than a block,
        between whole blocks (the pool's turns split blocks among readers),
        is traced when the runs are in order and between its neighbouring
        whole blocks; together with the other readers, every byte once.
        """
        stream = seededPlaintext(SEED, 20)
        cuts = [0, 70, 75, 100, 133, 140, 141, 200, 290, 300, 333, 400, 480, 500, 640]
        served = [b"", b""]
        for n in range(len(cuts) - 1):
            served[n % 2] += stream[cuts[n]:cuts[n + 1]]
        traced = trace(served)
        self.assertEqual(sum(piece.end - piece.start for pieces in traced for piece in pieces),
                         640)

    def test_messageNamesTheBlock(self):
        """
        The failure for a repeated block says which block and where.
        """
        error = self.assertRaises(FailTest, trace,
                                  [seededPlaintext(SEED, 2), seededPlaintext(SEED, 1, 1)])
        self.assertIn("served twice", str(error))
        self.assertIn("block 1 of seed", str(error))


class SeededStreamsTests(TestCase):
    """
    L{SeededStreams} looks blocks up within its limit only.
    """

    def test_limit(self):
        """
        A block beyond the limit is not found; one within it is.
        """
        streams = SeededStreams([SEED], limit=100)
        self.assertEqual(streams.find(seededBlock(SEED, 99)), (SEED, 99))
        self.assertIsNone(streams.find(seededBlock(SEED, 100)))

    def test_seedTwice(self):
        """
        A seed given twice is refused.
        """
        self.assertRaises(ValueError, SeededStreams, [SEED, SEED])


class PositionTests(TestCase):
    """
    L{positionOf} maps a client's byte to its place in the seeded stream.
    """

    def test_position(self):
        """
        Bytes of whole and part blocks are placed where the key produced
        them, across a gap.
        """
        data = seededPlaintext(SEED, 3)[5:] + seededPlaintext(SEED, 2, 10)
        [pieces] = trace([data])
        self.assertEqual(positionOf(pieces, 0), 5)
        self.assertEqual(positionOf(pieces, 90), 95)
        self.assertEqual(positionOf(pieces, 91), 320)
        self.assertRaises(FailTest, positionOf, pieces, len(data))


class RandomTurnsTests(TestCase):
    """
    The pool's turns, as they come: whole EGD reads (224 or 255 bytes),
    turns of a share of the pool (at least a block), now and then a few
    bytes; among two to four readers.
    """

    def test_randomTurns(self):
        """
        For twenty fixed random runs of turns, every reader's bytes are
        traced and together they cover the stream once.
        """
        stream = seededPlaintext(SEED, 300)
        for trial in range(20):
            chance = random.Random(trial)
            served = [b""] * chance.randint(2, 4)
            position = 0
            while position < len(stream):
                size = chance.choice([224, 255, chance.randint(32, 300),
                                      chance.randint(1, 40) if chance.random() < 0.1 else 224])
                served[chance.randrange(len(served))] += stream[position:position + size]
                position += size
            traced = trace(served)
            self.assertEqual(
                sum(piece.end - piece.start for pieces in traced for piece in pieces),
                len(stream), f"trial {trial}")


THIRD = b"test-seeded-third"


def relayOutput(chance, seeds, blocks, chunk=7):
    """
    What a relay's first-in first-out pool holds after its upstreams
    delivered: each key's blocks in its order, in chunks of C{chunk}
    blocks (one upstream request), the keys' chunks interleaved at random,
    now and then a few of a key's blocks lost (a host killed).

    @return: the pool's bytes, in order.
    """
    cursors = {seed: 0 for seed in seeds}
    out = []
    while any(cursor < blocks for cursor in cursors.values()):
        seed = chance.choice([s for s in seeds if cursors[s] < blocks])
        if chance.random() < 0.03:
            cursors[seed] += chance.randint(1, 40)  # lost with a killed host
        count = min(chunk, blocks - cursors[seed])
        if count > 0:
            out.append(seededPlaintext(seed, count, cursors[seed]))
            cursors[seed] += count
    return b"".join(out)


class SeveralKeysTests(TestCase):
    """
    A relay's clients get several keys' blocks interleaved: each key's in
    order, the keys' not (the upstreams deliver as they can).  The check
    traces that and still rejects what a broken relay would serve.
    """

    seeds = (SEED, OTHER, THIRD)

    def test_relayTurns(self):
        """
        Three keys' blocks, interleaved at random in a first-in first-out
        pool and handed out in turns of any size (a share of one arrival
        among twenty readers can be a few bytes) to twenty readers, are
        traced, every byte once.
        """
        for trial in range(10):
            chance = random.Random(trial)
            pool = relayOutput(chance, self.seeds, 300)
            served = [b""] * 20
            position = reader = 0
            while position < len(pool):
                size = chance.choice([255, 224, chance.randint(1, 12), chance.randint(1, 40),
                                      chance.randint(32, 300)])
                reader = (reader + chance.randint(1, 3)) % len(served)
                served[reader] += pool[position:position + size]
                position += size
            traced = trace(served, self.seeds)
            covered = sum(piece.end - piece.start for pieces in traced for piece in pieces)
            self.assertEqual(covered, sum(map(len, served)), f"trial {trial}")

    def test_crossKeyOrderFree(self):
        """
        One key's blocks may come before or after another's in any order,
        but each key's own blocks must come in its order.
        """
        data = (seededPlaintext(OTHER, 2, 5) + seededPlaintext(SEED, 2)
                + seededPlaintext(THIRD, 1) + seededPlaintext(OTHER, 1, 0))
        self.assertRaises(FailTest, trace, [data], self.seeds)
        data = (seededPlaintext(OTHER, 2, 5) + seededPlaintext(SEED, 2)
                + seededPlaintext(THIRD, 1) + seededPlaintext(OTHER, 1, 9))
        [pieces] = trace([data], self.seeds)
        self.assertEqual(len(pieces), 6)

    def test_randomBytes(self):
        """
        Random bytes are rejected with three keys as with one.
        """
        for _ in range(50):
            self.assertRaises(FailTest, trace, [os.urandom(64)], self.seeds)
        stream = seededPlaintext(SEED, 4) + seededPlaintext(OTHER, 4)
        self.assertRaises(FailTest, trace, [stream[:128] + os.urandom(32) + stream[128:]],
                          self.seeds)

    def test_repeatedBlock(self):
        """
        A block of one key served twice, to one client or two, between
        other keys' blocks, is rejected.
        """
        data = seededPlaintext(SEED, 3) + seededPlaintext(OTHER, 3) + seededBlock(SEED, 1)
        self.assertRaises(FailTest, trace, [data], self.seeds)
        self.assertRaises(FailTest, trace,
                          [seededPlaintext(SEED, 3) + seededPlaintext(THIRD, 2),
                           seededPlaintext(OTHER, 2) + seededBlock(SEED, 2)], self.seeds)

    def test_swappedBlocksOfOneKey(self):
        """
        Two blocks of one key swapped, with another key's between them, are
        rejected: each key's order holds.
        """
        data = (seededBlock(SEED, 0) + seededBlock(SEED, 2) + seededPlaintext(OTHER, 3)
                + seededBlock(SEED, 1) + seededPlaintext(THIRD, 2))
        self.assertRaises(FailTest, trace, [data], self.seeds)

    def test_unknownSeed(self):
        """
        A genuine block of a fourth key is rejected.
        """
        data = seededPlaintext(SEED, 2) + seededPlaintext(b"not-a-key", 1) + \
            seededPlaintext(OTHER, 2)
        self.assertRaises(FailTest, trace, [data], self.seeds)


class GiveBackTests(TestCase):
    """
    A run taken on from a whole block that goes on by chance into the next
    turn's first byte gives it back to the client whose run needs it.
    """

    def test_chanceByteGivenBack(self):
        """
        Reader A gets block 0, the start of block 1, then a turn whose first
        byte equals block 1's next byte; reader B gets the rest of block 1:
        both are traced, every byte once.
        """
        wanted = seededBlock(SEED, 1)[8]
        # The first block from 3 on holding that byte (not at its ends).
        j, o = next((j, o) for j in range(3, 200) for o in range(1, 27)
                    if seededBlock(SEED, j)[o] == wanted)
        b = [seededBlock(SEED, i) for i in range(j + 5)]
        a = b[0] + b[1][:8] + b[j][o:o + 5] + b[j + 3]
        bee = b[1][8:] + b"".join(b[2:j]) + b[j][:o]
        c = b[j][o + 5:] + b[j + 1] + b[j + 2] + b[j + 4]
        traced = trace([a, bee, c])
        self.assertEqual(sum(piece.end - piece.start for pieces in traced for piece in pieces),
                         len(a) + len(bee) + len(c))
        self.assertIn(Piece(SEED, 1, 8, 32, 1, 0), traced[1])
