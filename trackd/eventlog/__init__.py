"""The source of truth: record framing, segment files, recovery, typed events and their codec.

Synchronous; no sockets, no asyncio. Imports ``trackd.errors`` only (and msgpack, numpy, crc32c).
"""
