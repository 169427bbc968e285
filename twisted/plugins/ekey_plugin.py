from twisted.application.service import ServiceMaker

ekey = ServiceMaker("ekey", "ekey.tap", "Entropy Key host daemon: keys, EGD, relays, sinks", "ekey")
