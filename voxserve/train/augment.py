"""Audio augmentation: additive noise at a chosen SNR, a telephone channel (8 kHz, G.711 mu-law round trip),
small gain changes, and finding where the speech is.

Everything is batched torch code that runs on whatever device the audio is on: ``voxserve synth`` applies it to
one utterance at a time on the CPU, ``voxserve train`` to whole batches on the GPU. Randomness comes only from
the ``torch.Generator`` passed in, so a seed reproduces the same audio. Samples are float32 in [-1, 1], 16 kHz.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..config import SAMPLE_RATE

NOISE_KINDS = ("white", "pink", "brown")
TELEPHONE_RATE = 8000


def colored_noise(
    shape: tuple[int, int], kind: str, generator: torch.Generator, device: torch.device
) -> Tensor:
    """Noise [B, N] with unit RMS per row: white (flat), pink (power ~ 1/f) or brown (power ~ 1/f^2)."""
    if kind not in NOISE_KINDS:
        raise ValueError(f"noise kind must be one of {NOISE_KINDS}, got {kind!r}")
    x = torch.randn(shape, generator=generator, device=device)
    n = shape[-1]
    if kind != "white" and n > 1:
        spectrum = torch.fft.rfft(x)
        f = torch.fft.rfftfreq(n, device=device)
        f[0] = f[1]
        spectrum = spectrum / f ** (0.5 if kind == "pink" else 1.0)
        x = torch.fft.irfft(spectrum, n)
    return x / x.square().mean(dim=-1, keepdim=True).sqrt().clamp_min(1e-12)


def add_noise(
    x: Tensor, snr_db: Tensor, noise: Tensor, *, speech: Tensor | None = None, region: Tensor | None = None
) -> Tensor:
    """x + noise scaled so that speech power / noise power = ``snr_db`` per row.

    x, noise [B, N]; snr_db [B]; ``speech`` [B, N] bool marks where speech power is measured (default: all);
    ``region`` [B, N] bool marks where noise is added (default: all), e.g. the audio but not a window's padding.
    """
    weights = speech.float() if speech is not None else torch.ones_like(x)
    power = (x.square() * weights).sum(-1) / weights.sum(-1).clamp_min(1)
    scale = (power / 10 ** (snr_db / 10)).sqrt()[:, None]
    noise = noise * scale
    if region is not None:
        noise = noise * region
    return (x + noise).clamp(-1, 1)


def gain(x: Tensor, db: Tensor) -> Tensor:
    """x [B, N] scaled by ``db`` [B] decibels, clipped to [-1, 1]."""
    return (x * 10 ** (db[:, None] / 20)).clamp(-1, 1)


# G.711 mu-law encoding as in the ITU reference and Sun's widely used g711.c: 14-bit magnitude, a bias of 33,
# then a 3-bit segment and 4 mantissa bits, all bits inverted. (voxserve.audio has the decoder, not an encoder.)
_MU_CLIP = 8159


def _tensor(x: Tensor | np.ndarray) -> Tensor:
    return torch.from_numpy(np.array(x)) if isinstance(x, np.ndarray) else x


def mulaw_encode(pcm16: Tensor | np.ndarray) -> Tensor:
    """int16 samples -> G.711 mu-law codes (uint8), bit-exact with the reference encoder."""
    x = _tensor(pcm16).to(torch.int32) >> 2  # arithmetic shift to 14 bits, as the reference does
    mask = torch.where(x < 0, 0x7F, 0xFF)
    mag = x.abs().clamp_max(_MU_CLIP) + 0x21
    segment = (torch.log2(mag.double()).floor().to(torch.int32) - 5).clamp_min(0)
    seg = segment.clamp_max(7)
    code = (seg << 4) | ((mag >> (seg + 1)) & 0x0F)
    code = torch.where(segment > 7, 0x7F, code)  # clipped to the largest magnitude
    return (code ^ mask).to(torch.uint8)


def mulaw_expand(codes: Tensor) -> Tensor:
    """G.711 mu-law codes (any integer dtype, any device) -> int16 samples, through voxserve.audio's G.711
    expansion table (the decoder telephony input uses)."""
    from ..audio.g711 import expansion_table

    table = torch.from_numpy(expansion_table("mulaw")).to(codes.device)
    return table[codes.long()]


def highpass(x: Tensor, rate: int, cutoff: Tensor) -> Tensor:
    """Smooth spectral high-pass of rows x [B, N]: nothing below cutoff/2, a raised-cosine fade-in up to
    ``cutoff`` [B] Hz. (A phone line carries little below ~300 Hz.)"""
    n = x.shape[-1]
    spectrum = torch.fft.rfft(x)
    f = torch.fft.rfftfreq(n, 1 / rate, device=x.device)[None, :]
    half = cutoff[:, None] / 2
    ramp = ((f - half) / half).clamp(0, 1)
    return torch.fft.irfft(spectrum * (0.5 - 0.5 * torch.cos(math.pi * ramp)), n)


def telephone(x: Tensor, cutoff: Tensor | None = None) -> Tensor:
    """Rows x [B, N] at 16 kHz through a telephone channel: down to 8 kHz (band-limited to 4 kHz), high-pass
    at ``cutoff`` [B] Hz (default 300), G.711 mu-law encode and decode, back up to 16 kHz; same length."""
    from ..audio.resample import resample

    n = x.shape[-1]
    narrow = torch.as_tensor(resample(x, SAMPLE_RATE, TELEPHONE_RATE)).to(x.device, torch.float32)
    if cutoff is None:
        cutoff = torch.full((x.shape[0],), 300.0, device=x.device)
    narrow = highpass(narrow, TELEPHONE_RATE, cutoff)
    pcm = (narrow * 32767).round().clamp(-32768, 32767).to(torch.int16)
    decoded = mulaw_expand(mulaw_encode(pcm)).to(torch.float32) / 32768
    wide = torch.as_tensor(resample(decoded, TELEPHONE_RATE, SAMPLE_RATE)).to(x.device, torch.float32)
    out = torch.zeros_like(x)
    m = min(n, wide.shape[-1])
    out[:, :m] = wide[:, :m]
    return out.clamp(-1, 1)


def speech_bounds(
    x: np.ndarray | Tensor, rate: int = SAMPLE_RATE, *, threshold_db: float = -45.0
) -> tuple[int, int]:
    """(first, last) sample of the part louder than ``threshold_db`` relative to the loudest 10 ms frame of
    mono audio; (0, 0) for silence."""
    x = torch.as_tensor(x).float()
    hop = max(1, rate // 100)
    n = x.shape[-1] // hop
    if n == 0:
        return 0, 0
    energy = x[: n * hop].view(n, hop).square().mean(-1).sqrt()
    peak = float(energy.max())
    if peak <= 0:
        return 0, 0
    loud = torch.nonzero(energy >= peak * 10 ** (threshold_db / 20)).flatten()
    return int(loud[0]) * hop, min(x.shape[-1], (int(loud[-1]) + 1) * hop)


@dataclass(frozen=True)
class Augmentation:
    """Random per-utterance augmentation; each effect fires independently with its own probability."""

    noise_prob: float = 0.0
    snr_db: tuple[float, float] = (5.0, 30.0)
    telephone_prob: float = 0.0
    gain_prob: float = 0.0
    gain_db: tuple[float, float] = (-6.0, 6.0)

    def __post_init__(self) -> None:
        for name in ("noise_prob", "telephone_prob", "gain_prob"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        for name in ("snr_db", "gain_db"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"{name} must be LO,HI with LO <= HI, got {lo},{hi}")

    @property
    def active(self) -> bool:
        return self.noise_prob > 0 or self.telephone_prob > 0 or self.gain_prob > 0

    def __call__(
        self,
        x: Tensor,
        generator: torch.Generator,
        *,
        speech: Tensor | None = None,
        region: Tensor | None = None,
    ) -> tuple[Tensor, list[list[str]]]:
        """Augment rows x [B, N]; ``speech`` / ``region`` as in :func:`add_noise`. Returns the audio and, per
        row, the names of the effects applied. The generator must live on x's device."""
        b, device = x.shape[0], x.device
        applied: list[list[str]] = [[] for _ in range(b)]

        def draw(p: float) -> Tensor:
            return torch.rand(b, generator=generator, device=device) < p

        def uniform(lo: float, hi: float) -> Tensor:
            return lo + (hi - lo) * torch.rand(b, generator=generator, device=device)

        # All draws happen every call, whichever effects fire, so one row's choices never shift another's.
        phone, cutoff = draw(self.telephone_prob), uniform(200.0, 400.0)
        noisy, snr = draw(self.noise_prob), uniform(*self.snr_db)
        kinds = torch.randint(len(NOISE_KINDS), (b,), generator=generator, device=device)
        louder, db = draw(self.gain_prob), uniform(*self.gain_db)
        x = x.clone()
        if self.telephone_prob and bool(phone.any()):
            rows = phone.nonzero().flatten()
            x[rows] = telephone(x[rows], cutoff[rows])
            for r in rows.tolist():
                applied[r].append("telephone")
        if self.noise_prob and bool(noisy.any()):
            for k, kind in enumerate(NOISE_KINDS):
                rows = (noisy & (kinds == k)).nonzero().flatten()
                if len(rows) == 0:
                    continue
                noise = colored_noise((len(rows), x.shape[-1]), kind, generator, device)
                x[rows] = add_noise(
                    x[rows],
                    snr[rows],
                    noise,
                    speech=None if speech is None else speech[rows],
                    region=None if region is None else region[rows],
                )
                for r in rows.tolist():
                    applied[r].append(f"noise:{kind}:{float(snr[r]):.1f}dB")
        if self.gain_prob and bool(louder.any()):
            rows = louder.nonzero().flatten()
            x[rows] = gain(x[rows], db[rows])
            for r in rows.tolist():
                applied[r].append(f"gain:{float(db[r]):+.1f}dB")
        return x, applied


NO_AUGMENTATION = Augmentation()

__all__ = [
    "NO_AUGMENTATION",
    "Augmentation", "NOISE_KINDS", "add_noise", "colored_noise", "gain", "highpass", "mulaw_encode",
    "mulaw_expand", "speech_bounds", "telephone",
]  # fmt: skip
