"""Throughput and resource benchmarks for tcpft: ``python -m benchmarks.run --help``."""
