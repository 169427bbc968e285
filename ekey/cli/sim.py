"""
The command-line front end; its code moves here from ekey.services.simulator.
"""

from ekey.services.simulator import main

__all__ = ["main"]

if __name__ == "__main__":
    main()
