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

L{traceServed} checks that, whole block by whole block, for what one or
more clients were served: every whole block is traced exactly, and
nothing may be in no stream, twice, or (for first-in first-out servers)
out of order.  A client's reads need not end on block boundaries (an EGD
read is up to 255 bytes; the pool's turns may split a block between two
readers): the bytes between a client's whole blocks must then be runs of
the blocks between those two, in order, that no other client got.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from twisted.trial.unittest import FailTest

from ekey.core.units import BLOCK_SIZE
from ekey.services.simulator import seededBlock

#: How far into each seeded stream L{traceServed} looks by default: far more
#: blocks than any interop test draws from a key.
DEFAULT_LIMIT = 1 << 16

#: How many blocks before a client's first whole block, or after its last,
#: the bytes it got before or after them may come from (the blocks between
#: went to other readers).
TAIL_WINDOW = 1024

#: The shortest run L{_Gap.traceMiddle} takes in a window only one end of
#: which the client's own whole blocks fix.
MIN_OPEN_RUN = 4


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

    Each client's bytes are read as whole 32-byte blocks wherever they
    are.  Without C{ordered} (a server that hands out the newest blocks
    first, such as C{ekeyd}), that is all: every client's bytes must be
    whole blocks from its first byte.

    With C{ordered} (first-in first-out pools), a client's bytes may stop
    being whole blocks where its reads began or ended inside blocks (an
    EGD read is up to 255 bytes; the pool's turns may split blocks among
    readers).  Each read took a run of the pool's bytes, so the bytes
    between two whole blocks must be runs of bytes of the blocks between
    those two, in order: first a run going on from the earlier block,
    last a run running into the later one, and between them runs of
    bytes no other client got.  Before a client's first whole block and
    after its last, they must be runs of the L{TAIL_WINDOW} blocks before
    or after it.  A client's bytes must hold a whole block.

    Whole blocks are attributed first, then the runs next to them, then
    the others, each to bytes nobody else got: a run of a few bytes could
    match in several places, and it is attributed to the one consistent
    with the rest.  So part-blocks are traced as well as so few bytes can
    be; whole blocks are traced exactly.

    Several keys (a relay pulling from several upstreams): C{ordered}
    means each key's blocks in increasing order for each client, never
    the keys' blocks among themselves, which interleave as the upstreams
    deliver.  A client's part-block of one key may then sit between whole
    blocks of others: it is looked for between the client's last and next
    whole blocks of its key, or, for a key the client got no whole block
    of, among the blocks of that key others got parts of; long runs are
    attributed first (the longest over every client), then short runs
    that exactly fill a hole between bytes already traced, then short
    runs that join them (a turn of a first-in first-out pool begins where
    the one before ended).  The attribution of runs of a few bytes is
    greedy, without backtracking: a chance match (a run's last byte equal
    to the next byte of its stream, 1 in 256) can mislead it into
    rejecting genuine bytes when very many turns are a few bytes long;
    it never makes it accept bytes twice or out of a key's order.

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
    claims = _Claims()
    layouts = [_layOut(streams, n, data, ordered) for n, data in enumerate(served)]
    for layout in layouts:
        for item in layout:
            if isinstance(item, Piece):
                claims.claim(item)
    gaps = [item for layout in layouts for item in layout if isinstance(item, _Gap)]
    for gap in gaps:
        gap.traceEnds(claims)
    for gap in gaps:
        gap.traceSplits(claims)
    _giveBack(claims, gaps)
    # Then the runs the gaps' bytes left begin with: first those of
    # several bytes, longest first over every client (a run's last byte
    # may match the next byte of its stream by chance, taking a byte
    # another client's longer run needs: the longer run goes first), then
    # short runs filling holes exactly, then short runs joining what is
    # traced, one at a time, until nothing more can be traced.
    while True:
        _traceLongRuns(claims, gaps)
        if any([gap.traceFitting(claims) for gap in gaps]):
            continue
        if not any([gap.traceFitting(claims, loose=True) for gap in gaps]):
            break
    for gap in gaps:
        gap.traceMiddle(claims)
    traced = []
    for n, layout in enumerate(layouts):
        pieces: List[Piece] = []
        for item in layout:
            pieces.extend([item] if isinstance(item, Piece) else item.pieces())
        if ordered:
            _checkOrder(n, pieces)
        traced.append(pieces)
    return traced


def _traceLongRuns(claims: "_Claims", gaps: Sequence["_Gap"]) -> None:
    """
    Trace the long runs the gaps' bytes left begin with, the longest over
    every gap first, until no gap begins with one.
    """
    queue = []
    for number, gap in enumerate(gaps):
        run = gap.longRun(claims)
        if run is not None:
            heapq.heappush(queue, (-run[2], number))
    while queue:
        length, number = heapq.heappop(queue)
        gap = gaps[number]
        run = gap.longRun(claims)
        if run is None:
            continue
        if run[2] < -length:
            # Shortened by what others took since: back in the queue.
            heapq.heappush(queue, (-run[2], number))
            continue
        gap.takeRun(claims, run)
        run = gap.longRun(claims)
        if run is not None:
            heapq.heappush(queue, (-run[2], number))


#: How long a run must be, from where another client's run from its
#: whole block ended, for that run's last bytes to be given back to it.
GIVE_BACK_RUN = 8


def _giveBack(claims: "_Claims", gaps: Sequence["_Gap"]) -> None:
    """
    A run L{_Gap.traceEnds} took on from a whole block may have gone on by
    chance by a byte or two (1 in 256 each) into the next turn, which
    another client got: if what another gap has left begins with those
    bytes and goes on for L{GIVE_BACK_RUN} bytes of the same stream, or is
    just those bytes before its own run into its following whole block,
    they are its, and the first run is cut back.
    """
    heads: Dict[Tuple[bytes, bytes], List["_Gap"]] = {}
    for gap in gaps:
        if gap._head is not None:
            seed, end, length = gap._head
            for k in (1, 2):
                if length > k:
                    tail = gap._byteRun(seed, end - k, k)
                    heads.setdefault((seed, tail), []).append((gap, k))
    for gap in gaps:
        if gap._start >= gap._end:
            continue
        for seed in {seed for seed, _ in heads}:
            for k in (1, 2):
                for other, size in heads.get((seed, gap.data[gap._start:gap._start + k]), []):
                    if other is gap or size != k or other._head is None:
                        continue
                    _, end, length = other._head
                    run = gap.data[gap._start:gap._start + GIVE_BACK_RUN]
                    fills = (gap._end - gap._start == k and gap._tailStart == (seed, end))
                    if fills or (len(run) == GIVE_BACK_RUN and
                                 gap._byteRun(seed, end - k, GIVE_BACK_RUN) == run and
                                 all(claims.free(seed, end + i)
                                     for i in range(GIVE_BACK_RUN - k))):
                        other.giveBack(claims, k)


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


class _Claims:
    """
    Which bytes of which blocks have been attributed to some client.
    """

    def __init__(self):
        self._blocks: Dict[Tuple[bytes, int], List[Piece]] = {}
        self._masks: Dict[Tuple[bytes, int], int] = {}
        self._spans: Dict[bytes, Tuple[int, int]] = {}

    def claim(self, piece: Piece) -> None:
        """
        Attribute C{piece}'s bytes to its client.

        @raise FailTest: if another piece holds any of them.
        """
        key = (piece.seed, piece.index)
        mask = ((1 << piece.end) - 1) ^ ((1 << piece.start) - 1)
        if self._masks.get(key, 0) & mask:
            other = next(o for o in self._blocks[key]
                         if piece.start < o.end and o.start < piece.end)
            raise FailTest(f"served twice: {other.describe()} and {piece.describe()}")
        self._masks[key] = self._masks.get(key, 0) | mask
        self._blocks.setdefault(key, []).append(piece)
        first, last = self._spans.get(piece.seed, (piece.index, piece.index))
        self._spans[piece.seed] = (min(first, piece.index), max(last, piece.index))

    def seeds(self) -> List[bytes]:
        """
        @return: the seeds some bytes have been attributed to, in the order
            first seen.
        """
        return list(self._spans)

    def span(self, seed: bytes) -> Tuple[int, int]:
        """
        @return: the stream positions from the first block of C{seed} some
            bytes of which have been attributed, to the end of the last.
        """
        first, last = self._spans.get(seed, (0, -1))
        return first * BLOCK_SIZE, (last + 1) * BLOCK_SIZE

    def release(self, seed: bytes, position: int, count: int) -> None:
        """
        Take back the attribution of C{count} bytes from C{position} of
        C{seed}'s stream (all in one block, or the ends of two).
        """
        for p in range(position, position + count):
            index, bit = divmod(p, BLOCK_SIZE)
            key = (seed, index)
            self._masks[key] &= ~(1 << bit)
            pieces = []
            for piece in self._blocks[key]:
                if piece.start <= bit < piece.end:
                    if bit == piece.end - 1 and piece.end - piece.start > 1:
                        piece = Piece(piece.seed, piece.index, piece.start, bit, piece.stream,
                                      piece.offset)
                    elif piece.end - piece.start == 1:
                        continue
                pieces.append(piece)
            self._blocks[key] = pieces

    def free(self, seed: bytes, position: int) -> bool:
        """
        @return: whether byte C{position} of C{seed}'s stream is unclaimed.
        """
        index, bit = divmod(position, BLOCK_SIZE)
        return not (self._masks.get((seed, index), 0) >> bit) & 1


class _Gap:
    """
    Bytes of one client between its whole blocks (or before its first, or
    after its last), to be traced as runs of the blocks between.

    @ivar runs: C{(seed, stream position, length, offset in the gap)} of
        each run traced so far.
    """

    def __init__(self, stream: int, offset: int, data: bytes, last: Dict[bytes, int],
                 previous: Optional[Tuple[bytes, int]],
                 following: Optional[Tuple[bytes, int]],
                 upcoming: Optional[Dict[bytes, int]] = None):
        """
        @param stream: the client's number.
        @param offset: where the bytes begin in the client's bytes.
        @param data: the bytes.
        @param last: the client's last whole block of each seed before them.
        @param previous: the C{(seed, index)} of the whole block just before
            them, or C{None}.
        @param following: the C{(seed, index)} of the whole block just after
            them, or C{None}.
        @param upcoming: the client's next whole block of each seed after
            them (with several keys, a key's part-block may sit between
            whole blocks of the others: its window then ends at the
            client's next whole block of that key, or begins
            L{TAIL_WINDOW} blocks before it).  C{None}: C{following}'s
            alone.
        """
        self.stream = stream
        self.offset = offset
        self.data = data
        self.previous = previous
        self.following = following
        self.runs: List[Tuple[bytes, int, int, int]] = []
        #: The run taken on from the previous whole block: C{(seed, end
        #: position, length)}, while it may be given back.
        self._head: Optional[Tuple[bytes, int, int]] = None
        #: Where the run into the following whole block begins.
        self._tailStart: Optional[Tuple[bytes, int]] = None
        # The stream positions each seed's runs may take: after the client's
        # last block of the seed and before its next whole block (if of
        # that seed), or at most TAIL_WINDOW blocks either way.
        self.windows: Dict[bytes, Tuple[int, int]] = {}
        if upcoming is None:
            upcoming = {following[0]: following[1]} if following else {}
        #: Seeds whose window has an end not fixed by the client's own
        #: whole blocks (L{TAIL_WINDOW} wide): short runs could match
        #: anywhere in so much, so L{traceMiddle} takes none there.
        self.open = set()
        for seed in set(last) | set(upcoming):
            first = last[seed] + 1 if seed in last else None
            stop = upcoming.get(seed)
            if first is None or stop is None:
                self.open.add(seed)
            if first is None:
                first = max(0, stop - TAIL_WINDOW)
            if stop is None:
                stop = first + TAIL_WINDOW
            if stop > first:
                self.windows[seed] = (first * BLOCK_SIZE, stop * BLOCK_SIZE)
        # What is left to trace: data[self._start:self._end].
        self._start = 0
        self._end = len(data)

    def _byte(self, seed: bytes, position: int) -> int:
        return seededBlock(seed, position // BLOCK_SIZE)[position % BLOCK_SIZE]

    def _take(self, claims: _Claims, seed: bytes, position: int, length: int,
              offset: int) -> None:
        self.runs.append((seed, position, length, offset))
        for piece in self._split(seed, position, length, offset):
            claims.claim(piece)

    def _split(self, seed: bytes, position: int, length: int, offset: int) -> List[Piece]:
        pieces = []
        for runStart in range(position, position + length):
            if runStart == position or runStart % BLOCK_SIZE == 0:
                index, start = divmod(runStart, BLOCK_SIZE)
                end = min(BLOCK_SIZE, start + position + length - runStart)
                pieces.append(Piece(seed, index, start, end, self.stream,
                                    self.offset + offset + runStart - position))
        return pieces

    def traceEnds(self, claims: _Claims) -> None:
        """
        Trace the run going on from the previous whole block and the one
        running into the following: the likeliest runs, traced first (the
        longer first, where both would take the same bytes).
        """
        ends = []
        if self.previous is not None and self.previous[0] in self.windows:
            seed = self.previous[0]
            low, high = self.windows[seed]
            length = 0
            while (length < len(self.data) and low + length < high
                   and claims.free(seed, low + length)
                   and self.data[length] == self._byte(seed, low + length)):
                length += 1
            ends.append((length, "head", seed))
        if self.following is not None and self.following[0] in self.windows:
            seed = self.following[0]
            low, high = self.windows[seed]
            length = 0
            while (length < len(self.data) and high - length - 1 >= low
                   and claims.free(seed, high - length - 1)
                   and self.data[-length - 1] == self._byte(seed, high - length - 1)):
                length += 1
            ends.append((length, "tail", seed))
        lengths = {end: (length, seed) for length, end, seed in ends}
        head, headSeed = lengths.get("head", (0, None))
        tail, tailSeed = lengths.get("tail", (0, None))
        size = len(self.data)
        # Where both could take some bytes, one of them went on by chance:
        # take only what is certain now, and split the rest once every
        # client's certain bytes are known (L{traceSplits}).
        self._undecided = None
        if head + tail > size:
            self._undecided = (headSeed, tailSeed, size - tail, head)
            head, tail = size - tail, size - head
        self._takeHead(claims, headSeed, head)
        self._takeTail(claims, tailSeed, tail)

    def _takeHead(self, claims: _Claims, seed: Optional[bytes], length: int) -> None:
        if length:
            low, high = self.windows[seed]
            self._take(claims, seed, low, length, self._start)
            self._start += length
            self.windows[seed] = (low + length, high)
            before = self._head[2] if self._head and self._head[:2] == (seed, low) else 0
            self._head = (seed, low + length, before + length)

    def _byteRun(self, seed: bytes, position: int, length: int) -> bytes:
        """
        @return: C{length} bytes of C{seed}'s stream from C{position}.
        """
        return bytes(self._byte(seed, p) for p in range(position, position + length))

    def giveBack(self, claims: _Claims, count: int) -> None:
        """
        Cut the run taken on from the previous whole block (the last one
        traced at the start of what is left) back by C{count} bytes.
        """
        seed, end, length = self._head
        runSeed, position, runLength, offset = self.runs[-1]
        if ((runSeed, position + runLength) != (seed, end) or offset + runLength != self._start
                or runLength < count):
            return
        claims.release(seed, end - count, count)
        self.runs[-1] = (runSeed, position, runLength - count, offset)
        if runLength == count:
            self.runs.pop()
        self._start -= count
        low, high = self.windows[seed]
        self.windows[seed] = (low - count, high)
        self._head = None

    def _takeTail(self, claims: _Claims, seed: Optional[bytes], length: int) -> None:
        if length:
            low, high = self.windows[seed]
            self._end -= length
            self._take(claims, seed, high - length, length, self._end)
            self.windows[seed] = (low, high - length)
            self._tailStart = (seed, high - length)

    def traceSplits(self, claims: _Claims) -> None:
        """
        Share the bytes both the run from the previous whole block and the
        run into the following one could take: at the first place where
        each takes only bytes nobody else got.
        """
        if self._undecided is None:
            return
        headSeed, tailSeed, first, last = self._undecided
        for split in range(last, first - 1, -1):
            # The head would take data[first:split], the tail data[split:last].
            headLow = self.windows[headSeed][0]
            tailHigh = self.windows[tailSeed][1]
            if (all(claims.free(headSeed, headLow + i) for i in range(split - first))
                    and all(claims.free(tailSeed, tailHigh - (last - split) + i)
                            for i in range(last - split))):
                self._takeHead(claims, headSeed, split - first)
                self._takeTail(claims, tailSeed, last - split)
                return

    def _text(self, seed: bytes, low: int, high: int) -> Tuple[int, bytes]:
        """
        @return: the first position of the blocks holding stream positions
            C{low} to C{high} of C{seed}, and those blocks' bytes (cached).
        """
        base = low - low % BLOCK_SIZE
        cached = self._texts.get(seed)
        if cached is None or cached[0] > base or cached[0] + len(cached[1]) < high:
            cached = (base, seededPlaintext(seed, (high - base + BLOCK_SIZE - 1) // BLOCK_SIZE,
                                            base // BLOCK_SIZE))
            self._texts[seed] = cached
        return cached

    def _candidates(self, claims: _Claims) -> List[Tuple[bytes, int, int, bool, bool]]:
        """
        @return: every place the bytes left could begin, as C{(seed,
            stream position, length of the run of unclaimed matching
            bytes, whether the byte before it is claimed or the stream's
            first, whether the byte after it is claimed)}: in the gap's
            windows, or, for a key with no window, in the blocks of it
            anybody got bytes of.
        """
        if not hasattr(self, "_texts"):
            self._texts: Dict[bytes, Tuple[int, bytes]] = {}
        found = []
        first = self.data[self._start:self._start + 1]
        for seed in set(claims.seeds()) | set(self.windows):
            low, high = self.windows[seed] if seed in self.windows else claims.span(seed)
            if high <= low:
                continue
            base, text = self._text(seed, low, high)
            at = low - base
            while True:
                at = text.find(first, at, high - base)
                if at < 0:
                    break
                position = base + at
                if claims.free(seed, position):
                    length = 0
                    while (self._start + length < self._end and position + length < high
                           and text[at + length] == self.data[self._start + length]
                           and claims.free(seed, position + length)):
                        length += 1
                    found.append((seed, position, length,
                                  position == 0 or not claims.free(seed, position - 1),
                                  not claims.free(seed, position + length)))
                at += 1
        return found

    def longRun(self, claims: _Claims) -> Optional[Tuple[bytes, int, int]]:
        """
        @return: the run of at least L{MIN_OPEN_RUN} bytes the bytes left
            begin with (the longest, then the earliest), as C{(seed,
            stream position, length)}, or C{None}.
        """
        if self._start >= self._end:
            return None
        long = [c for c in self._candidates(claims) if c[2] >= MIN_OPEN_RUN]
        return min(long, key=lambda c: (-c[2], c[1]))[:3] if long else None

    def takeRun(self, claims: _Claims, run: Tuple[bytes, int, int]) -> None:
        """
        Attribute the bytes left's first C{run} (from L{longRun} or
        L{traceFitting}).
        """
        seed, position, length = run
        self._take(claims, seed, position, length, self._start)
        self._start += length
        if seed in self.windows:
            self.windows[seed] = (position + length, self.windows[seed][1])

    def traceFitting(self, claims: _Claims, loose: bool = False) -> bool:
        """
        Trace, from the start of what is left, short runs that exactly fill
        a hole between bytes already traced (a pool's turn begins where
        the one before it ended, and the next begins where it ends): the
        earliest.  With C{loose}, one run joining bytes already traced at
        its start is enough (the earliest of the longest), and only one is
        traced.

        @return: whether anything was traced.
        """
        progress = False
        while self._start < self._end:
            candidates = self._candidates(claims)
            if loose:
                choice = [c for c in candidates if c[3]]
            else:
                choice = [c for c in candidates if c[3] and c[4]]
            if not choice:
                return progress
            self.takeRun(claims, min(choice, key=lambda c: (-c[2], c[1]))[:3])
            progress = True
            if loose:
                return progress
        return progress

    def traceMiddle(self, claims: _Claims) -> None:
        """
        Trace the rest, in order, as the longest runs of unclaimed bytes of
        the windows.

        @raise FailTest: if some bytes fit nowhere.
        """
        if self._start >= self._end:
            return
        # Each window's bytes, from the start of its first block.
        windows = {}
        for seed, (low, high) in self.windows.items():
            base = low - low % BLOCK_SIZE
            text = seededPlaintext(seed, (high - base + BLOCK_SIZE - 1) // BLOCK_SIZE,
                                   base // BLOCK_SIZE)
            windows[seed] = [base, low, high, text]
        offset = self._start
        while offset < self._end:
            best = None
            for seed, (base, low, high, text) in windows.items():
                at = low - base
                while True:
                    at = text.find(self.data[offset:offset + 1], at, high - base)
                    if at < 0:
                        break
                    length = 0
                    while (offset + length < self._end and base + at + length < high
                           and text[at + length] == self.data[offset + length]
                           and claims.free(seed, base + at + length)):
                        length += 1
                    if seed in self.open and length < MIN_OPEN_RUN:
                        pass
                    elif length and (best is None or length > best[2]):
                        best = (seed, base + at, length)
                    at += 1
            if best is None:
                raise FailTest(
                    f"client {self.stream}: {self._end - offset} bytes at offset "
                    f"{self.offset + offset} ({self.data[offset:offset + BLOCK_SIZE].hex()}...) "
                    "are not whole seeded blocks, nor parts of the blocks between the client's "
                    "neighbouring whole blocks that nobody else got, in order")
            seed, position, length = best
            self._take(claims, seed, position, length, offset)
            # The next run of this seed comes later in its stream.
            windows[seed][1] = position + length
            offset += length

    def pieces(self) -> List[Piece]:
        """
        @return: the pieces traced, in the client's order.
        """
        runs: List[list] = []
        for seed, position, length, offset in sorted(self.runs, key=lambda run: run[3]):
            if runs and runs[-1][0] == seed and sum(runs[-1][1:3]) == position \
                    and runs[-1][3] + runs[-1][2] == offset:
                runs[-1][2] += length  # one run, traced in two steps
            else:
                runs.append([seed, position, length, offset])
        pieces = []
        for seed, position, length, offset in runs:
            pieces.extend(self._split(seed, position, length, offset))
        return pieces


def _layOut(streams: SeededStreams, number: int, data: bytes, ordered: bool) -> list:
    """
    Find one client's whole blocks, and the gaps between them.

    @return: L{Piece}s (whole blocks) and L{_Gap}s, in order.
    @raise FailTest: for bytes that are not whole blocks, without
        C{ordered}; for bytes holding no whole block, with it.
    """
    items: list = []
    last: Dict[bytes, int] = {}
    position = 0
    while position < len(data):
        found = streams.find(data[position:position + BLOCK_SIZE])
        if found is not None:
            items.append(Piece(*found, 0, BLOCK_SIZE, number, position))
            last[found[0]] = found[1]
            position += BLOCK_SIZE
            continue
        if not ordered:
            raise FailTest(
                f"client {number}: the {min(BLOCK_SIZE, len(data) - position)} bytes at offset "
                f"{position} ({data[position:position + BLOCK_SIZE].hex()}) are not a seeded "
                f"block (searched {streams.limit} blocks of each of {len(streams.seeds)} "
                "streams)")
        resume, following = len(data), None
        for candidate in range(position + 1, len(data) - BLOCK_SIZE + 1):
            following = streams.find(data[candidate:candidate + BLOCK_SIZE])
            if following is not None:
                resume = candidate
                break
        previous = (items[-1].seed, items[-1].index) if items else None
        # The gap is made once the whole blocks after it are known.
        items.append((position, data[position:resume], dict(last), previous, following))
        position = resume
    upcoming: Dict[bytes, int] = {}
    for at in range(len(items) - 1, -1, -1):
        item = items[at]
        if isinstance(item, Piece):
            upcoming[item.seed] = item.index
        else:
            items[at] = _Gap(number, *item, upcoming=dict(upcoming))
    if data and not any(isinstance(item, Piece) for item in items):
        raise FailTest(f"client {number}: no whole seeded block in its {len(data)} bytes "
                       f"({data[:BLOCK_SIZE].hex()}...), so they cannot be traced")
    return items


def _checkOrder(number: int, pieces: Sequence[Piece]) -> None:
    """
    @raise FailTest: if one client's pieces of some seed's blocks are not
        in increasing order.
    """
    last: Dict[bytes, Piece] = {}
    for piece in pieces:
        before = last.get(piece.seed)
        if before is not None and (piece.index, piece.start) < (before.index, before.end):
            raise FailTest(f"client {number}: {piece.describe()} comes after "
                           f"{before.describe()}: out of order, or served twice")
        last[piece.seed] = piece


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
