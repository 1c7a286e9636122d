"""A few bytes' look at an audio file: which format it claims to be, and whether it visibly ends early.

FFmpeg decodes, but leaves three questions open that the caller's error depends on:
- bytes it cannot open: a damaged file of an audio format (corrupt) or not audio at all (unsupported)? The
  magic numbers below answer that.
- a file cut short that its demuxer silently accepts: a WAV whose data chunk is shorter than its header says,
  an Ogg stream whose last page is cut or lacks the end-of-stream flag. ``truncation`` checks both.
- may a decoded length be compared with the length an MP3 declares? Only when a Xing/Info/VBRI header states
  the frame count; without one FFmpeg estimates the length from the first frame's bit rate, which is wrong
  for variable bit rates.
All readers take ``read_at(offset, n) -> bytes`` and the total size, so bytes, paths and seekable file objects
are treated alike, and only the few bytes looked at are read.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

ReadAt = Callable[[int, int], bytes]

_OGG_MAX_PAGE = 27 + 255 + 255 * 255  # header, lacing table, payload


def audio_kind(read_at: ReadAt) -> str | None:
    """The audio format the first bytes announce (a display name), or None."""
    head = read_at(0, 16)
    if head[:4] in (b"RIFF", b"RF64") and head[8:12] == b"WAVE":
        return "WAV"
    if head[:4] == b"fLaC":
        return "FLAC"
    if head[:4] == b"OggS":
        return "Ogg"
    if head[4:8] == b"ftyp":
        return "MP4/M4A"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "WebM/Matroska"
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return "AIFF"
    if head[:4] == b"caff":
        return "CAF"
    if head[:4] == b"wvpk":
        return "WavPack"
    if head[:6] == b"#!AMR":
        return "AMR"
    if head[:3] == b"ID3":
        return "MP3"
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xF6 == 0xF0:
        return "AAC (ADTS)"  # sync word, then layer bits 00, which MPEG audio never uses
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        return "MP3"
    return None


def _syncsafe(b: bytes) -> int:
    return (b[0] << 21) | (b[1] << 14) | (b[2] << 7) | b[3]


def mp3_declares_length(read_at: ReadAt) -> bool:
    """True when the first MP3 frame carries a Xing, Info or VBRI header (an exact frame count)."""
    offset = 0
    tag = read_at(0, 10)
    if tag[:3] == b"ID3" and len(tag) == 10:
        offset = 10 + _syncsafe(tag[6:10]) + (10 if tag[5] & 0x10 else 0)
    head = read_at(offset, 4096)
    for i in range(len(head) - 1):  # tags may be followed by padding before the first frame
        if head[i] == 0xFF and head[i + 1] & 0xE0 == 0xE0:
            frame = head[i : i + 200]
            return any(marker in frame for marker in (b"Xing", b"Info", b"VBRI"))
    return False


def _wav_truncation(read_at: ReadAt, size: int) -> str | None:
    if read_at(0, 4) != b"RIFF":
        return None  # RF64 keeps its sizes elsewhere; FFmpeg's own checks apply
    offset = 12
    for _ in range(64):  # chunks before 'data' are few (fmt, fact, LIST); stop on nonsense
        header = read_at(offset, 8)
        if len(header) < 8:
            return "the WAV header ends before its data chunk"
        chunk, length = header[:4], struct.unpack("<I", header[4:])[0]
        if chunk == b"data":
            if length in (0, 0xFFFFFFFF):
                return None  # written as a stream: the length was never filled in
            end = offset + 8 + length
            if end > size:
                return f"its data chunk declares {length} bytes, only {size - offset - 8} are present"
            return None
        offset += 8 + length + (length & 1)
    return None


def _ogg_truncation(read_at: ReadAt, size: int) -> str | None:
    start = max(0, size - _OGG_MAX_PAGE - 1)
    tail = read_at(start, size - start)
    i = len(tail)
    while (i := tail.rfind(b"OggS", 0, i)) >= 0:
        header = tail[i : i + 27]
        if len(header) == 27 and header[4] == 0:
            lacing = tail[i + 27 : i + 27 + header[26]]
            if len(lacing) == header[26] and start + i + 27 + len(lacing) + sum(lacing) == size:
                # The page that ends exactly at the end of the file is the last one.
                return None if header[5] & 0x04 else "its last Ogg page is not marked end-of-stream"
    return "its last Ogg page is cut off"


def truncation(kind: str | None, read_at: ReadAt, size: int) -> str | None:
    """Why the file visibly ends early (a phrase for an error message), or None when nothing shows it."""
    if kind == "WAV":
        return _wav_truncation(read_at, size)
    if kind == "Ogg":
        return _ogg_truncation(read_at, size)
    return None


__all__ = ["ReadAt", "audio_kind", "mp3_declares_length", "truncation"]
