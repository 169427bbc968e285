"""
Tracing served bytes back to simulated keys' seeded streams, block by
block.

A simulated key started with C{--seed S} produces the plaintext blocks
C{seededBlock(S, 0)}, C{seededBlock(S, 1)}, ... (32 bytes each, numbered
over the key's whole life: a block the host dropped or a fault corrupted
is never produced again).  The daemon moves entropy in whole blocks
(L{ekey.core.units.BLOCK_SIZE}): the health monitor releases them whole,
relays ask their upstreams for whole blocks, and the pool hands out its
bytes first in, first out.  So every byte a client is served belongs to
exactly one block of one key's stream, and a client of a first-in
first-out pool gets each key's blocks in increasing order.

L{traceServed} checks exactly that, whole block by whole block, for what
one or more clients were served.  A client's reads need not end on block
boundaries (an EGD read is up to 255 bytes; the pool's turns may split a
block between two readers): where a client's bytes stop being whole
blocks, the bytes up to its next whole block must be the start of the
block that followed its last one and the end of the block before its next
one (first-in first-out order is what makes these two blocks known);
nothing else is accepted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from twisted.trial.unittest import FailTest

from ekey.core.units import BLOCK_SIZE
from ekey.services.simulator import seededBlock

#: How far into each seeded stream L{traceServed} looks by default: far more
#: blocks than any interop test draws from a key.
DEFAULT_LIMIT = 1 << 16

#: How many blocks after a client's last block of a stream the block its
#: last read began in may be (the blocks between went to other readers).
TAIL_WINDOW = 64


def seededPlaintext(seed: bytes, count: int, start: int = 0) -> bytes:
    """
    @return: the simulator's plaintext blocks C{start} .. C{start+count-1}
        for C{--seed}, concatenated.
    """
    return b"".join(seededBlock(seed, i) for i in range(start, start + count))


def describeMismatch(expected: bytes, actual: bytes) -> str:
    """
    @return: where two byte strings first differ, in blocks, for a failure
        message.
    """
    for n in range(0, min(len(expected), len(actual)), BLOCK_SIZE):
        if expected[n:n + BLOCK_SIZE] != actual[n:n + BLOCK_SIZE]:
            return (f"first difference at block {n // BLOCK_SIZE}: expected "
                    f"{expected[n:n + BLOCK_SIZE].hex()}, got "
                    f"{actual[n:n + BLOCK_SIZE].hex()}")
    return f"lengths differ: expected {len(expected)} bytes, got {len(actual)}"


@dataclass(frozen=True)
class Piece:
    """
    Bytes C{start} to C{end} (exclusive) of one seeded block, as one client
    was served them.

    @ivar seed: the key's seed.
    @ivar index: the block's number in that key's stream.
    @ivar start: the first byte of the block served (0 unless the client's
        read began inside the block).
    @ivar end: one past the last byte served (32 unless the client's read
        ended inside the block).
    @ivar stream: which of the streams given to L{traceServed} it is in.
    @ivar offset: where in that stream it begins.
    """

    seed: bytes
    index: int
    start: int
    end: int
    stream: int
    offset: int

    @property
    def whole(self) -> bool:
        """
        Whether the client got the whole block in one piece.
        """
        return self.start == 0 and self.end == BLOCK_SIZE

    def describe(self) -> str:
        """
        @return: the piece, for a failure message.
        """
        part = "" if self.whole else f" bytes {self.start}..{self.end - 1}"
        return (f"block {self.index} of seed {self.seed!r}{part} (client {self.stream}, "
                f"offset {self.offset})")


class SeededStreams:
    """
    The seeded streams of some simulated keys, their blocks looked up by
    content.  The table grows as far as C{limit} blocks of each seed only
    when a block is not found in what it holds.
    """

    def __init__(self, seeds: Sequence[bytes], limit: int = DEFAULT_LIMIT):
        """
        @param seeds: the keys' seeds (distinct).
        @param limit: how many blocks of each stream to look at, at most.
        @raise ValueError: if a seed is given twice.
        """
        if len(set(seeds)) != len(seeds):
            raise ValueError("a seed is given twice")
        self.seeds = list(seeds)
        self.limit = limit
        self._known: Dict[bytes, Tuple[bytes, int]] = {}
        self._built = 0

    def _grow(self) -> bool:
        if self._built >= self.limit:
            return False
        upTo = min(self.limit, max(4096, self._built * 2))
        for seed in self.seeds:
            for index in range(self._built, upTo):
                self._known[seededBlock(seed, index)] = (seed, index)
        self._built = upTo
        return True

    def find(self, block: bytes) -> Optional[Tuple[bytes, int]]:
        """
        @param block: 32 bytes.
        @return: the C{(seed, index)} of the seeded block C{block} is, or
            C{None} if it is none of the first C{limit} of any stream.
        """
        if len(block) != BLOCK_SIZE:
            return None
        while block not in self._known:
            if not self._grow():
                return None
        return self._known[block]


def traceServed(served: Sequence[bytes], seeds: Sequence[bytes], ordered: bool = True,
                limit: int = DEFAULT_LIMIT) -> List[List[Piece]]:
    """
    Attribute every byte some clients were served to exactly one block of
    one key's seeded stream.

    Each client's bytes are read as whole 32-byte blocks.  With C{ordered}
    (first-in first-out pools), a client's bytes may stop being whole
    blocks where one of its reads began or ended inside a block: the bytes
    before its next whole block must then be the start of the block that
    followed its previous one in the same stream and the end of the block
    before its next one (either part may be empty; at the very start of a
    client's bytes there is only the end of a block).  After a client's
    last whole block, its bytes may end with the start of the next block
    and the end of one of the L{TAIL_WINDOW} blocks after that: fewer than
    64 bytes, traced as well as so few bytes can be.  Without C{ordered} (a server that hands out the
    newest blocks first, such as C{ekeyd}), every client's bytes must be
    whole blocks from its first byte.

    @param served: what each client received, in the order received.
    @param seeds: the seeds of every key whose bytes may have been served.
    @param ordered: whether each client must get each key's blocks in
        increasing order.
    @param limit: how many blocks of each stream to look at.
    @return: for each client, the pieces of blocks it got, in order.
    @raise FailTest: if any bytes are in no seeded stream, or come out of
        order (with C{ordered}), or if any byte of a block was served
        twice (to one client or to two).
    """
    streams = SeededStreams(seeds, limit)
    traced = [_traceOne(streams, n, data, ordered) for n, data in enumerate(served)]
    claimed: Dict[Tuple[bytes, int], List[Piece]] = {}
    for pieces in traced:
        for piece in pieces:
            for other in claimed.setdefault((piece.seed, piece.index), []):
                if piece.start < other.end and other.start < piece.end:
                    raise FailTest(f"served twice: {other.describe()} and {piece.describe()}")
            claimed[(piece.seed, piece.index)].append(piece)
    return traced


def indicesOf(pieces: Sequence[Piece]) -> List[int]:
    """
    @return: the block numbers of C{pieces} (of one client, from
        L{traceServed}), each block once, in order.
    """
    indices: List[int] = []
    for piece in pieces:
        if not indices or indices[-1] != piece.index or piece.start == 0:
            indices.append(piece.index)
    return indices


def _traceOne(streams: SeededStreams, number: int, data: bytes, ordered: bool) -> List[Piece]:
    """
    L{traceServed} for one client's bytes (without the check across
    clients).
    """
    pieces: List[Piece] = []
    # The last block of each seed this client got, for the order check and
    # to know which block a read that ended inside one ended in.
    last: Dict[bytes, int] = {}
    position = 0

    def fail(reason: str) -> None:
        raise FailTest(f"client {number}, {len(data)} bytes: {reason}")

    def add(seed: bytes, index: int, start: int, end: int, offset: int) -> None:
        if ordered and seed in last:
            previous = last[seed]
            # Two parts of one block are in order if the second is later in it.
            sameBlockLater = (index == previous and pieces and pieces[-1].index == index
                              and pieces[-1].seed == seed and start >= pieces[-1].end)
            if index < previous or (index == previous and not sameBlockLater):
                fail(f"block {index} of seed {seed!r} at offset {offset} comes after block "
                     f"{previous}: out of order, or served twice")
        last[seed] = index
        pieces.append(Piece(seed, index, start, end, number, offset))

    while position < len(data):
        found = streams.find(data[position:position + BLOCK_SIZE])
        if found is not None:
            add(*found, 0, BLOCK_SIZE, position)
            position += BLOCK_SIZE
            continue
        if not ordered:
            fail(f"the {min(BLOCK_SIZE, len(data) - position)} bytes at offset {position} "
                 f"({data[position:position + BLOCK_SIZE].hex()}) are not a seeded block "
                 f"(searched {streams.limit} blocks of each of {len(streams.seeds)} streams)")
        # A read began or ended inside a block: find where whole blocks
        # resume, at most two part-blocks later.
        resume, following = len(data), None
        for candidate in range(position + 1,
                               min(position + 2 * BLOCK_SIZE, len(data) - BLOCK_SIZE + 1)):
            following = streams.find(data[candidate:candidate + BLOCK_SIZE])
            if following is not None:
                resume = candidate
                break
        gap = data[position:resume]
        # Candidates for the block a read ended in: the block after the last
        # one of each seed.  For the block a read began in: the one before
        # the next whole block.
        heads = [(seed, index + 1) for seed, index in last.items()]
        if pieces:
            heads.insert(0, (pieces[-1].seed, last[pieces[-1].seed] + 1))
        if following is not None:
            tails = [(following[0], following[1] - 1)] if following[1] else []
        else:
            # The client's last read began inside a block, after the blocks
            # it got before: one of the next few of some stream.
            tails = [(seed, index + ahead) for seed, index in last.items()
                     for ahead in range(1, TAIL_WINDOW + 1)]
        explained = None
        for headLength in range(min(len(gap), BLOCK_SIZE - 1), -1, -1):
            tailLength = len(gap) - headLength
            if tailLength >= BLOCK_SIZE:
                continue
            tail = None
            if tailLength:
                tail = next((t for t in tails
                             if seededBlock(*t)[BLOCK_SIZE - tailLength:] == gap[headLength:]),
                            None)
                if tail is None:
                    continue
            head = None
            if headLength:
                head = next((h for h in heads
                             if seededBlock(*h)[:headLength] == gap[:headLength]), None)
                if head is None:
                    continue
            explained = (head, headLength, tailLength)
            break
        if explained is None:
            fail(f"the {len(gap)} bytes at offset {position} ({gap[:BLOCK_SIZE].hex()}...) are "
                 "not a seeded block, nor the start of the block after this client's last "
                 "and the end of the block before its next (searched "
                 f"{streams.limit} blocks of each of {len(streams.seeds)} streams)")
        head, headLength, tailLength = explained
        if headLength:
            add(*head, 0, headLength, position)
        if tailLength:
            add(*tail, BLOCK_SIZE - tailLength, BLOCK_SIZE, position + headLength)
        position = resume
    return pieces


def positionOf(pieces: Sequence[Piece], offset: int) -> int:
    """
    @param pieces: one client's pieces, from L{traceServed}.
    @param offset: a byte's offset in that client's bytes.
    @return: that byte's offset in its key's seeded stream (block number
        times 32, plus its place in the block).
    @raise FailTest: if no piece holds the offset.
    """
    for piece in pieces:
        if piece.offset <= offset < piece.offset + piece.end - piece.start:
            return piece.index * BLOCK_SIZE + piece.start + offset - piece.offset
    raise FailTest(f"no byte at offset {offset} of client {pieces[0].stream if pieces else '?'}")
