"""
The command-line front end; its code moves here from ekey.services.feeder.
"""

from ekey.services.feeder import main

__all__ = ["main"]

if __name__ == "__main__":
    main()
