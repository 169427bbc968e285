"""
Helpers for the interop tests and the benchmarks: real processes, real
sockets and real time, with a time limit on every wait.  They belong to
the interop tests and benchmarks only; unit tests use Twisted's fakes.

One module per concern:

  - L{tests.interop.requirements}: finding real peers; skipping, or
    failing under C{EKEY_REQUIRE_INTEROP=1}, when one is missing.
  - L{tests.interop.processes}: starting C{ekey-sim}, C{twistd ekey},
    relays and C{ekeyd} as subprocesses, waiting for their sockets and
    logs, and tearing them down.
  - L{tests.interop.egdsockets}: blocking EGD client sockets.
  - L{tests.interop.tlspeers}: certificates, endpoint strings, C{stunnel}
    and C{openssl s_client}.
  - L{tests.interop.kernel}: C{strace} traces of the kernel's random
    device, C{setpriv}, C{ekey-feed-kernel}.
  - L{tests.interop.load}: many clients at once, and a process's memory
    and open-file limits.
  - L{tests.interop.seeded}: tracing served bytes to the seeded streams of
    simulated keys, block by block.
"""
