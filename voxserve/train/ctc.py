"""An auxiliary CTC loss on the encoder, used only while training.

A Whisper-architecture model trained from scratch spends thousands of steps as a pure language model before its
cross-attention finds the audio: the decoder can lower its loss from text alone, so nothing forces the encoder
to represent what was said. A connectionist temporal classification (CTC) loss over the characters of the text,
computed from the encoder's output frames alone, gives the encoder that signal from the first step (the hybrid
CTC/attention recipe of joint ASR training). The head is a single linear layer over a small character alphabet;
it is not part of the exported model, which stays a plain Whisper checkpoint.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Index 0 is the CTC blank. Text is lower-cased; characters outside the alphabet are dropped (punctuation) and
# runs of spaces collapse, so the head learns what is audible.
ALPHABET = " 'abcdefghijklmnopqrstuvwxyz0123456789"
BLANK = 0
_INDEX = {c: i + 1 for i, c in enumerate(ALPHABET)}


def char_targets(text: str) -> list[int]:
    """CTC target ids (1..len(ALPHABET)) of ``text``: lower-cased, unknown characters dropped, spaces collapsed."""
    out: list[int] = []
    for c in text.lower():
        if c.isspace():
            c = " "
        i = _INDEX.get(c)
        if i is None or (c == " " and (not out or out[-1] == _INDEX[" "])):
            continue
        out.append(i)
    while out and out[-1] == _INDEX[" "]:
        out.pop()
    return out


class CTCHead(nn.Module):
    """Encoder states [B, T, d] -> character log-probabilities [B, T, len(ALPHABET) + 1] (float32)."""

    def __init__(self, n_state: int) -> None:
        super().__init__()
        self.proj = nn.Linear(n_state, len(ALPHABET) + 1)

    def forward(self, features: Tensor) -> Tensor:
        return F.log_softmax(self.proj(features).float(), dim=-1)


def ctc_loss(head: CTCHead, features: Tensor, targets: Tensor, target_lengths: Tensor) -> Tensor:
    """Mean CTC loss per target character over a batch. ``targets`` is the concatenation of every window's
    character ids, ``target_lengths`` [B] their lengths; every encoder frame is an input frame."""
    log_probs = head(features).transpose(0, 1)  # [T, B, C], as F.ctc_loss wants
    frames = torch.full((features.shape[0],), features.shape[1], dtype=torch.long, device=features.device)
    # zero_infinity: a window whose text cannot fit its frames (not reachable at 50 frames/s) must not poison
    # the batch with an infinite loss.
    loss = F.ctc_loss(
        log_probs, targets, frames, target_lengths, blank=BLANK, reduction="sum", zero_infinity=True
    )
    return loss / target_lengths.sum().clamp(min=1)


__all__ = ["ALPHABET", "BLANK", "CTCHead", "char_targets", "ctc_loss"]
