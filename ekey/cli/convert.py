"""
C{ekey-convert-ekeyd-conf FILE}: print the TOML configuration of
C{twistd ekey --config} that does what an ekeyd.conf does.
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence

from ekey.core.configfile import ConfigError, readEkeydConf, toTOML

USAGE = "usage: ekey-convert-ekeyd-conf [/etc/entropykey/ekeyd.conf]"


def main(argv: Optional[Sequence[str]] = None, out=None, err=None) -> int:
    """
    @return: the exit status (also used by the console script).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    out = out or sys.stdout
    err = err or sys.stderr
    if argv and argv[0] in ("-h", "--help"):
        print(USAGE, file=out)
        print("Prints the TOML for 'twistd ekey --config FILE' equivalent to an ekeyd.conf "
              "(default /etc/entropykey/ekeyd.conf).", file=out)
        return 0
    if argv and argv[0] == "--version":
        from ekey import __version__
        print(f"ekey-convert-ekeyd-conf {__version__}", file=out)
        return 0
    if len(argv) > 1 or (argv and argv[0].startswith("-")):
        print(f"ekey-convert-ekeyd-conf: give one ekeyd.conf ({USAGE})", file=err)
        return 2
    path = argv[0] if argv else "/etc/entropykey/ekeyd.conf"
    try:
        options = readEkeydConf(path)
    except ConfigError as e:
        print(f"ekey-convert-ekeyd-conf: {e}", file=err)
        return 1
    out.write(toTOML(options, [f"Converted from {path} by ekey-convert-ekeyd-conf.",
                               "Use it with: twistd ekey --config THIS-FILE"]))
    return 0


def run() -> None:
    """
    The console script.
    """
    sys.exit(main())


if __name__ == "__main__":
    run()
