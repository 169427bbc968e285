from twisted.application.service import ServiceMaker

ekey = ServiceMaker("ekey", "ekey.cli.twistd", "Entropy Key host daemon: keys, EGD, relays, sinks", "ekey")
