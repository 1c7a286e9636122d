"""The typed errors for audio that cannot be used; each message names the source and says what is wrong.

They derive from ``ValueError`` (the input is bad, not the program), so callers map them to a client error:
the server answers 400 (corrupt, empty), 415 (unsupported) or 413 (too long), the CLI prints one line.
"""

from __future__ import annotations


class AudioError(ValueError):
    """Audio input that cannot be decoded or used."""


class EmptyAudioError(AudioError):
    """No bytes at all, or a valid file that holds zero samples."""


class CorruptAudioError(AudioError):
    """A recognised audio format whose data is truncated or damaged."""


class UnsupportedAudioError(AudioError):
    """Not audio: an unknown container or codec, a file without an audio stream, a directory."""


class AudioTooLongError(AudioError):
    """Longer than the caller's ``max_duration``; raised as soon as the limit is passed."""

    def __init__(self, message: str, *, limit: float) -> None:
        super().__init__(message)
        self.limit = limit


__all__ = ["AudioError", "AudioTooLongError", "CorruptAudioError", "EmptyAudioError", "UnsupportedAudioError"]
