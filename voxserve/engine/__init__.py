"""The batching engine: continuous batching over KV-cache slots, CUDA-graph decode steps (see engine.py)."""
