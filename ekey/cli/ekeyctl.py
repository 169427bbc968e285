"""
The command-line front end; its code moves here from ekey.services.control.
"""

from ekey.services.control import main

__all__ = ["main"]

if __name__ == "__main__":
    main()
