"""
The command-line front end; its code moves here from ekey.services.rekey.
"""

from ekey.services.rekey import main

__all__ = ["main"]

if __name__ == "__main__":
    main()
