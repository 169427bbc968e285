from ekey.mtls import MutualTLSServerParser

mtls = MutualTLSServerParser()
