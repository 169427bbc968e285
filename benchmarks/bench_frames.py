"""
How much a key costs the host: microseconds per entropy frame for framing,
MAC check and decryption in pure Python, and the share of one core that a
key at its real rate takes.

    python3 benchmarks/bench_frames.py [--frames N] [--repeat R]

Figures are CPU time of this process (not wall time, so other processes on
the machine disturb them less), the best of R runs.  The Threefish block time is measured in the same run as a
baseline: a frame costs four blocks, so the ratio shows the overhead around
the cipher.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ekey.core.frames import binaryPayload, buildContent, buildFrame, parseFrame  # noqa: E402
from ekey.core.skein import _threefish, prepared  # noqa: E402
from tests.vectors import SERIAL, SESSION, transcriptSession  # noqa: E402

#: A real key's rate: about 32 kbit/s, 125 entropy frames a second (the
#: protocol summary the project works from; Simtec's own figure for the key).
#: No real key was measured here: this is the rate a key is specified at.
REAL_RATES = {"125 frames/s (a key's specified 32 kbit/s)": 125}


def best(repeat, function):
    times = []
    for _ in range(repeat):
        start = time.process_time()
        function()
        times.append(time.process_time() - start)
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--frames", type=int, default=4000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    sessionKey = bytes.fromhex(SESSION["session_key"])
    pms = prepared("PMS", SERIAL, sessionKey)
    frames = [
        buildFrame(buildContent("E", binaryPayload(i, os.urandom(32)), True), pms)
        for i in range(args.frames)
    ]
    stream = b"".join(frames)

    def fullPath():
        session = transcriptSession()
        for offset in range(0, len(stream), 4096):
            session.receiveData(stream[offset : offset + 4096])
        assert session.statistics.entropyBytes == 32 * args.frames

    packets = [parseFrame(f) for f in frames]
    ees = prepared("EES", SERIAL, sessionKey)

    def macOnly():
        for p in packets:
            p.verify(pms)

    def decryptOnly():
        for p in packets:
            ees.copy().update(p.payload[:2]).final()

    words = [int.from_bytes(os.urandom(8), "little") for _ in range(8)]
    blockArgs = (*words[:4], 32, 48 << 56, *words[4:])

    def blocks():
        for _ in range(args.frames):
            _threefish(*blockArgs)

    n = args.frames
    perFrame = best(args.repeat, fullPath) / n * 1e6
    mac = best(args.repeat, macOnly) / n * 1e6
    decrypt = best(args.repeat, decryptOnly) / n * 1e6
    block = best(args.repeat, blocks) / n * 1e6
    print(f"python {sys.version.split()[0]}, {n} frames, best of {args.repeat}")
    print(f"threefish-256 block (baseline):            {block:7.1f} us")
    print(f"MAC check per frame (2 blocks):            {mac:7.1f} us")
    print(f"decryption per frame (2 blocks):           {decrypt:7.1f} us")
    print(f"whole path per frame (framing+MAC+decrypt): {perFrame:7.1f} us"
          f"  = {perFrame / block:.2f} blocks; target <= 200 us")
    for label, rate in REAL_RATES.items():
        print(f"share of one core at {label}: {perFrame * rate / 1e4:.2f} %")


if __name__ == "__main__":
    main()
