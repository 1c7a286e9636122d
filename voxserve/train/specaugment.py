"""SpecAugment-style masking of training log-mel: frequency bands and short stretches of time set to the
window's mean (Park et al., 2019; the time masks adaptive to the audio's length, Park et al., 2020).

Masking makes every presentation of an utterance look different to the encoder, and a masked stretch can only be
read from what is around it, which keeps the model from identifying a training utterance by details of one
rendering. Time masks fall only where the window holds audio (a packed window's or a single utterance's span, not
the zero padding after it), as many per window as its length asks for, so a 3 s utterance and a 30 s packed window
lose the same share. Batched tensor code on the batch's device; randomness only from the generator passed in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

FRAMES_PER_SECOND = 100  # log-mel frames a second (10 ms hop)


@dataclass(frozen=True)
class SpecAugment:
    freq_masks: int = 0  # frequency masks per window
    freq_width: int = 27  # widest frequency mask, in mel bins (each width drawn uniformly from 0..freq_width)
    time_masks_per_s: float = 0.0  # time masks per second of audio in the window (adaptive SpecAugment)
    time_width: float = 0.1  # widest time mask in seconds (each width drawn uniformly from 0..time_width)

    def __post_init__(self) -> None:
        if self.freq_masks < 0 or self.freq_width < 0:
            raise ValueError(
                f"freq_masks and freq_width must be >= 0, got {self.freq_masks}, {self.freq_width}"
            )
        if not 0 <= self.time_masks_per_s <= 10 or not 0 <= self.time_width <= 5:
            raise ValueError(
                f"time_masks_per_s must be in [0, 10] and time_width in [0, 5] s, got "
                f"{self.time_masks_per_s}, {self.time_width}"
            )

    @property
    def active(self) -> bool:
        freq = self.freq_masks > 0 and self.freq_width > 0
        return freq or (self.time_masks_per_s > 0 and self.time_width > 0)

    def __call__(self, mel: Tensor, filled_frames: Tensor, generator: torch.Generator) -> Tensor:
        """mel [B, n_mels, T] with masks applied (a new tensor); ``filled_frames`` [B] (on mel's device): frames
        of each window that hold audio, where time masks may fall."""
        if not self.active:
            return mel
        b, n_mels, t = mel.shape
        device = mel.device
        masked = torch.zeros(b, n_mels, t, dtype=torch.bool, device=device)
        if self.freq_masks > 0 and self.freq_width > 0:
            masked |= _bands(b, self.freq_masks, self.freq_width, torch.full((b,), n_mels, device=device),
                             n_mels, generator)[:, :, None]  # fmt: skip
        if self.time_masks_per_s > 0 and self.time_width > 0:
            filled = filled_frames.clamp(0, t)
            width = round(self.time_width * FRAMES_PER_SECOND)
            most = int(self.time_masks_per_s * t / FRAMES_PER_SECOND) + 1
            # Stochastic rounding: a window expecting 0.3 masks gets one 30 % of the time.
            expected = filled.float() / FRAMES_PER_SECOND * self.time_masks_per_s
            count = (expected + torch.rand(b, generator=generator, device=device)).floor().long()
            spans = _bands(b, most, width, filled, t, generator, active=count)
            masked |= spans[:, None, :]
        # The window's mean over its audio: a masked stretch looks like neither silence nor a loud sound.
        audio = torch.arange(t, device=device)[None, :] < filled_frames.clamp(1, t)[:, None]
        mean = (mel * audio[:, None, :]).sum((1, 2)) / (audio.sum(1) * n_mels)
        return torch.where(masked, mean[:, None, None].to(mel.dtype), mel)


def _bands(
    b: int,
    n: int,
    max_width: int,
    extent: Tensor,
    size: int,
    generator: torch.Generator,
    *,
    active: Tensor | None = None,
) -> Tensor:
    """[B, size] bool: up to ``n`` bands a row, each of width 0..max_width, inside [0, extent[row]); only the
    first active[row] bands of a row are used (all when None)."""
    device = extent.device
    width = (torch.rand(b, n, generator=generator, device=device) * (max_width + 1)).floor().long()
    width = torch.minimum(width, extent[:, None])
    start = (
        (torch.rand(b, n, generator=generator, device=device) * (extent[:, None] - width + 1)).floor().long()
    )
    if active is not None:
        width = torch.where(torch.arange(n, device=device)[None, :] < active[:, None], width, 0)
    positions = torch.arange(size, device=device)[None, None, :]
    inside = (positions >= start[:, :, None]) & (positions < (start + width)[:, :, None])
    return inside.any(1)


__all__ = ["FRAMES_PER_SECOND", "SpecAugment"]
