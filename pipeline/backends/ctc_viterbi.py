"""CTC forced alignment: the single best path of a known token sequence through CTC emissions.

Written by hand because the maintained implementation (torchaudio.functional.forced_align) is not
usable on this platform and ctc-segmentation solves a different problem (segmenting long texts);
this is the textbook Viterbi over the blank-interleaved trellis that whisperX also uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TokenSpan:
    token: int  # index into the target sequence
    start: int  # first frame
    end: int  # one past the last frame
    score: float  # mean probability over its frames


def forced_align(log_probs: np.ndarray, targets: list[int], blank: int = 0) -> list[int]:
    """Best CTC path: for each frame, the trellis state (even = blank, 2k+1 = targets[k]).

    log_probs: T x V log-probabilities. Raises ValueError when the targets cannot fit in T frames.
    """
    T = log_probs.shape[0]
    L = len(targets)
    states = np.full(2 * L + 1, blank, dtype=np.int64)
    states[1::2] = targets
    S = len(states)
    repeats = sum(1 for a, b in zip(targets, targets[1:]) if a == b)
    if T < L + repeats:
        raise ValueError(f"{L} tokens need at least {L + repeats} frames; the emissions have {T}")
    # A state may skip the blank before it when it is a token different from the one two back.
    can_skip = np.zeros(S, bool)
    can_skip[3::2] = states[3::2] != states[1:-2:2]
    neg = -np.inf
    score = np.full(S, neg)
    score[0] = log_probs[0, states[0]]
    if S > 1:
        score[1] = log_probs[0, states[1]]
    back = np.zeros((T, S), dtype=np.int8)  # 0 stay, 1 from s-1, 2 from s-2
    for t in range(1, T):
        stay = score
        step = np.concatenate(([neg], score[:-1]))
        skip = np.where(can_skip, np.concatenate(([neg, neg], score[:-2])), neg)
        choice = np.argmax(np.stack([stay, step, skip]), axis=0)
        best = np.choose(choice, [stay, step, skip])
        back[t] = choice
        score = best + log_probs[t, states]
    end = S - 1 if S == 1 or score[S - 1] >= score[S - 2] else S - 2
    if not np.isfinite(score[end]):
        raise ValueError("no CTC path through these emissions")
    path = [end]
    for t in range(T - 1, 0, -1):
        path.append(path[-1] - int(back[t, path[-1]]))
    return path[::-1]


def token_spans(log_probs: np.ndarray, targets: list[int], blank: int = 0) -> list[TokenSpan]:
    """The frames each target token occupies on the best path."""
    path = forced_align(log_probs, targets, blank)
    spans: list[TokenSpan] = []
    t = 0
    while t < len(path):
        s = path[t]
        if s % 2 == 1:
            k = s // 2
            u = t
            while u < len(path) and path[u] == s:
                u += 1
            probs = np.exp(log_probs[t:u, targets[k]])
            spans.append(TokenSpan(k, t, u, float(probs.mean())))
            t = u
        else:
            t += 1
    return spans
