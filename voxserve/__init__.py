"""voxserve: fast, dependable Whisper-family speech recognition."""
