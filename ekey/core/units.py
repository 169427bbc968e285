"""
Sizes every layer agrees on.
"""

#: Bytes of entropy in one of a key's E frames, the unit in which verified
#: entropy moves: the health monitor releases whole blocks, the pool grants
#: readers' shares in whole blocks, relays ask upstreams for whole blocks,
#: so that a key's block reaches a reader whole, along a chain too.
BLOCK_SIZE = 32
