"""Token search strategies: greedy/sampling and beam search, plus how finished hypotheses are ranked.

A strategy sees logits for every live hypothesis and returns the extended token matrix. Beam search keeps its
bookkeeping of finished hypotheses per audio; choosing candidates is one batched top-k and sort.
Shapes: tokens [B, T] with B = n_audio * n_group, logits [B, V], sum_logprobs [B].
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


class GreedySearch:
    """Argmax at temperature 0, otherwise a sample from softmax(logits / temperature)."""

    def __init__(self, temperature: float, eot: int, generator: torch.Generator | None = None) -> None:
        self.temperature = temperature
        self.eot = eot
        self.generator = generator

    def reset(self) -> None:
        pass

    def update(
        self, tokens: Tensor, logits: Tensor, sum_logprobs: Tensor
    ) -> tuple[Tensor, bool, Tensor | None]:
        """Returns (tokens [B, T+1], all finished?, row order for the cache or None when unchanged)."""
        if self.temperature == 0:
            next_tokens = logits.argmax(dim=-1)
        else:
            probs = torch.softmax(logits.float() / self.temperature, dim=-1)
            next_tokens = torch.multinomial(probs, 1, generator=self.generator).squeeze(1)
        logprobs = F.log_softmax(logits.float(), dim=-1)
        picked = logprobs.gather(1, next_tokens[:, None]).squeeze(1)
        done = tokens[:, -1] == self.eot
        sum_logprobs += torch.where(done, torch.zeros_like(picked), picked)
        next_tokens = torch.where(done, torch.full_like(next_tokens, self.eot), next_tokens)
        tokens = torch.cat([tokens, next_tokens[:, None]], dim=-1)
        return tokens, bool((next_tokens == self.eot).all()), None

    def finalize(self, tokens: Tensor, sum_logprobs: Tensor) -> tuple[list[list[Tensor]], list[list[float]]]:
        """tokens [n_audio, n_group, T] -> per audio, candidate sequences ending in end-of-text and their scores."""
        tokens = F.pad(tokens, (0, 1), value=self.eot)
        return [list(group) for group in tokens], sum_logprobs.tolist()


class BeamSearch:
    """Beam search with patience: each audio keeps ``beam_size`` live hypotheses and stops once
    ``round(beam_size * patience)`` have finished."""

    def __init__(self, beam_size: int, eot: int, patience: float | None = None) -> None:
        self.beam_size = beam_size
        self.eot = eot
        self.max_candidates = round(beam_size * (patience or 1.0))
        self.finished: list[dict[tuple[int, ...], float]] | None = None

    def reset(self) -> None:
        self.finished = None

    def update(self, tokens: Tensor, logits: Tensor, sum_logprobs: Tensor) -> tuple[Tensor, bool, Tensor]:
        beam = self.beam_size
        n_audio = tokens.shape[0] // beam
        if self.finished is None:
            self.finished = [{} for _ in range(n_audio)]
            # All beams start identical: only the first may propose candidates, or they would repeat.
            first = torch.arange(tokens.shape[0], device=tokens.device) % beam == 0
            sum_logprobs.masked_fill_(~first, -torch.inf)
        logprobs = F.log_softmax(logits.float(), dim=-1)
        top_lp, top_tok = logprobs.topk(beam + 1, dim=-1)  # [B, beam+1]
        scores = (sum_logprobs[:, None] + top_lp).view(n_audio, beam * (beam + 1))
        cand_tok = top_tok.view(n_audio, -1)
        cand_src = (
            torch.arange(tokens.shape[0], device=tokens.device).repeat_interleave(beam + 1).view(n_audio, -1)
        )
        order = scores.sort(dim=-1, descending=True, stable=True).indices
        scores, cand_tok, cand_src = (
            scores.gather(1, order),
            cand_tok.gather(1, order),
            cand_src.gather(1, order),
        )
        is_eot = cand_tok == self.eot
        live_rank = (~is_eot).cumsum(dim=-1)  # 1-based rank among continuing candidates
        keep = ~is_eot & (live_rank <= beam)
        # Candidates are read in score order until `beam` continuing ones are kept; a finished candidate
        # counts only if it ranks before the last kept one (fewer than `beam` kept up to it).
        newly_finished = is_eot & (live_rank < beam)

        src = cand_src[keep].view(n_audio, beam).flatten()
        next_tok = cand_tok[keep].view(n_audio, beam).flatten()
        sum_logprobs.copy_(scores[keep])
        new_tokens = torch.cat([tokens[src], next_tok[:, None]], dim=-1)

        fin_rows, fin_cols = newly_finished.nonzero(as_tuple=True)
        if fin_rows.numel():
            prefixes = tokens[cand_src[fin_rows, fin_cols]].tolist()
            fin_scores = scores[fin_rows, fin_cols].tolist()
            for a, prefix, score in zip(fin_rows.tolist(), prefixes, fin_scores, strict=True):
                if len(self.finished[a]) < self.max_candidates:
                    self.finished[a][tuple(prefix) + (self.eot,)] = score
        completed = all(len(f) >= self.max_candidates for f in self.finished)
        return new_tokens, completed, src

    def finalize(self, tokens: Tensor, sum_logprobs: Tensor) -> tuple[list[list[Tensor]], list[list[float]]]:
        """Finished hypotheses per audio; topped up with the best unfinished ones if too few finished."""
        assert self.finished is not None
        lp = sum_logprobs.cpu()
        for a, found in enumerate(self.finished):
            if len(found) < self.beam_size:
                for j in np.argsort(lp[a].numpy(), kind="stable")[::-1]:
                    found[tuple(tokens[a, j].tolist()) + (self.eot,)] = lp[a, j].item()
                    if len(found) >= self.beam_size:
                        break
        seqs = [[torch.tensor(s) for s in found] for found in self.finished]
        return seqs, [list(found.values()) for found in self.finished]


def rank_by_likelihood(
    length_penalty: float | None,
) -> Callable[[list[list[Tensor]], list[list[float]]], list[int]]:
    """Index of the best candidate per audio: log-prob over length, or over ((5 + length) / 6) ** alpha."""

    def rank(tokens: list[list[Tensor]], sum_logprobs: list[list[float]]) -> list[int]:
        best = []
        for seqs, lps in zip(tokens, sum_logprobs, strict=True):
            lengths = [len(s) for s in seqs]
            if length_penalty is None:
                scores = [lp / n if n else lp for lp, n in zip(lps, lengths, strict=True)]
            else:
                scores = [lp / ((5 + n) / 6) ** length_penalty for lp, n in zip(lps, lengths, strict=True)]
            best.append(int(np.argmax(scores)))
        return best

    return rank
