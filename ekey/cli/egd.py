"""
The command-line front end; its code moves here from ekey.services.client.
"""

from ekey.services.client import main

__all__ = ["main"]

if __name__ == "__main__":
    main()
