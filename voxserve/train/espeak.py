"""Rendering text with the espeak-ng command-line synthesiser.

The binary is ``$ESPEAK_NG`` when set, else ``espeak-ng`` on the PATH; espeak-ng itself reads
``$ESPEAK_DATA_PATH`` (the folder holding ``espeak-ng-data``). A copy unpacked from the Debian packages into any
folder (``dpkg -x``) finds its libraries through ``$ESPEAK_NG_LIBRARY_PATH``, which is put on the
``LD_LIBRARY_PATH`` of the espeak-ng processes only, so Python and torch keep the system's own libraries. Audio comes back on stdout as a WAV stream
and is read with the standard library's ``wave`` module: no audio decoder package is needed.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import wave
from dataclasses import dataclass

import numpy as np

# espeak-ng voices for each language code used in manifests. Mandarin uses "cmn-latn-pinyin": with Chinese
# characters it speaks tonal Mandarin, whereas espeak-ng 1.51's "cmn" voice reads the pinyin its dictionary
# produces through English rules ("ni3" becomes "nee three"), which is unusable.
DEFAULT_VOICES = {
    "en": ("en-us", "en", "en-gb-x-rp", "en-029", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-gbcwmd"),
    "zh": ("cmn-latn-pinyin",),
}
DEFAULT_VARIANTS = ("", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4")


class EspeakError(RuntimeError):
    """espeak-ng is missing or failed; the message says how to install or point to it."""


def espeak_env() -> dict[str, str] | None:
    """The environment for espeak-ng processes: ours, plus $ESPEAK_NG_LIBRARY_PATH on LD_LIBRARY_PATH."""
    extra = os.environ.get("ESPEAK_NG_LIBRARY_PATH")
    if not extra:
        return None
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = ":".join(p for p in (extra, env.get("LD_LIBRARY_PATH", "")) if p)
    return env


def find_espeak() -> str:
    """The espeak-ng binary to run: ``$ESPEAK_NG``, else ``espeak-ng`` on the PATH."""
    env = os.environ.get("ESPEAK_NG")
    if env:
        if not (os.path.isfile(env) and os.access(env, os.X_OK)):
            raise EspeakError(f"ESPEAK_NG={env} is not an executable file")
        return env
    found = shutil.which("espeak-ng")
    if not found:
        raise EspeakError(
            "espeak-ng is not installed: run `make system-packages` (or `apt-get install espeak-ng`), or set "
            "ESPEAK_NG to the binary and ESPEAK_DATA_PATH to the folder holding espeak-ng-data"
        )
    return found


@dataclass(frozen=True)
class Rendering:
    samples: np.ndarray  # int16 mono
    sample_rate: int


def render(
    text: str, voice: str, *, speed: int = 175, pitch: int = 50, binary: str | None = None
) -> Rendering:
    """Speak ``text`` with ``voice`` (e.g. "en-us+f3") at ``speed`` words a minute and ``pitch`` (0..99)."""
    if not text.strip():
        raise ValueError("cannot render empty text")
    cmd = [binary or find_espeak(), "-v", voice, "-s", str(int(speed)), "-p", str(int(pitch)), "-b", "1"]
    try:
        # Text goes through stdin, so a sentence starting with "-" is never taken for an option.
        proc = subprocess.run(
            [*cmd, "--stdout"],
            input=" ".join(text.split()).encode("utf-8"),
            capture_output=True,
            timeout=120,
            env=espeak_env(),
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise EspeakError(f"could not run {cmd[0]}: {e}") from None
    if proc.returncode != 0 or len(proc.stdout) < 44:
        err = proc.stderr.decode("utf-8", "replace").strip()
        raise EspeakError(
            f"espeak-ng failed for voice {voice!r} (exit {proc.returncode}): {err or 'no audio'}"
        )
    return read_wav_bytes(proc.stdout)


def read_wav_bytes(data: bytes) -> Rendering:
    """Parse a PCM16 mono WAV stream. espeak-ng writes it without knowing the length, so the header's frame
    count is a placeholder: the samples are whatever follows the header."""
    try:
        with wave.open(io.BytesIO(data)) as w:
            if w.getsampwidth() != 2 or w.getnchannels() != 1:
                raise EspeakError(
                    f"expected 16-bit mono audio, got {w.getsampwidth() * 8}-bit x{w.getnchannels()}"
                )
            rate = w.getframerate()
            frames = w.readframes(w.getnframes())
    except (wave.Error, EOFError) as e:
        raise EspeakError(f"espeak-ng wrote unreadable audio: {e}") from None
    samples = np.frombuffer(frames[: len(frames) // 2 * 2], dtype="<i2").astype(np.int16)
    return Rendering(samples, rate)


def voice_available(voice: str, binary: str | None = None) -> bool:
    """Whether espeak-ng can speak with ``voice`` (renders one short word)."""
    try:
        render("one", voice, binary=binary)
    except EspeakError:
        return False
    return True


def list_variants(binary: str | None = None) -> set[str]:
    """Names of the voice variants espeak-ng knows ("m1", "f3", "klatt", ...); unknown "+variant" suffixes
    are silently ignored by espeak-ng, so they are checked against this list instead."""
    try:
        proc = subprocess.run(
            [binary or find_espeak(), "--voices=variant"],
            capture_output=True,
            text=True,
            timeout=30,
            env=espeak_env(),
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise EspeakError(f"could not list espeak-ng voice variants: {e}") from None
    if proc.returncode != 0:
        raise EspeakError(
            f"espeak-ng --voices=variant failed (exit {proc.returncode}): {proc.stderr.strip()}"
        )
    names = set()
    for line in proc.stdout.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 5 and parts[-1].startswith("!v/"):
            names.add(parts[-1][3:])
    return names


__all__ = [
    "DEFAULT_VARIANTS",
    "DEFAULT_VOICES",
    "EspeakError",
    "Rendering",
    "find_espeak",
    "read_wav_bytes",
    "render",
    "voice_available",
]
