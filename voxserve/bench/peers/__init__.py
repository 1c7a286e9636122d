"""Peers: other Whisper implementations doing the benchmark's exact work on the same weights.

Each module imports its package only when the peer is built, and raises :class:`~voxserve.bench.weights.
BenchError` with an install hint when the package is missing.
"""
