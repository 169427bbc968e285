from ekey.services.mtls import MutualTLSServerParser

mtls = MutualTLSServerParser()
