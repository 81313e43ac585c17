"""The offline describer: lexicon knowledge and the prosody summary written out as a deterministic text.

VADER (sentiment of the whole utterance and of the stressed words), the NRC Emotion Lexicon (the
emotions the words evoke) and a small stance lexicon (hedges, boosters, directives and questions,
after Hyland's metadiscourse categories), so ES carries what a listener infers beyond the words.
"""

from __future__ import annotations

from functools import cached_property

# Stance markers (after Hyland 2005, "Metadiscourse"): general English, not tuned to any corpus.
HEDGES = frozenset({"perhaps", "maybe", "possibly", "probably", "might", "may", "could", "seems", "seem",
                    "somewhat", "guess", "suppose", "apparently", "likely", "unsure", "think", "believe",
                    "fairly", "rather", "sort", "kind"})
BOOSTERS = frozenset({"certainly", "definitely", "clearly", "surely", "undoubtedly", "doubt", "always", "never",
                      "must", "indeed", "obviously", "absolutely", "sure", "totally", "completely", "know"})
DIRECTIVES = frozenset({"listen", "look", "stop", "come", "go", "tell", "give", "take", "let", "wait", "make",
                        "keep", "remember", "note", "consider", "imagine", "get", "put", "sit", "stand"})
AUXILIARIES = frozenset({"do", "does", "did", "are", "is", "was", "were", "can", "could", "would", "will",
                         "have", "has", "should", "shall", "may", "am"})


def _polarity(x: float) -> str:
    return ("clearly positive" if x >= 0.5 else "positive" if x >= 0.05 else
            "clearly negative" if x <= -0.5 else "negative" if x <= -0.05 else "neutral")


class KnowledgeDescriber:
    @cached_property
    def vader(self):  # type: ignore[no-untyped-def]
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        return SentimentIntensityAnalyzer()

    def describe(self, transcript: str, words: list[str], stressed: list[str], prosody: str) -> str:
        from nrclex import NRCLex

        compound = self.vader.polarity_scores(transcript)["compound"]
        parts = [f"The wording is {_polarity(compound)} (VADER {compound:+.2f})."]
        nrc = NRCLex()
        nrc.load_token_list(words)
        emotions = sorted(((n, e) for e, n in nrc.raw_emotion_scores.items() if e not in ("positive", "negative")),
                          key=lambda t: (-t[0], t[1]))
        if emotions:
            parts.append("Its words evoke " + ", ".join(e for _, e in emotions[:3]) + " (NRC).")
        if stressed:
            s = self.vader.polarity_scores(" ".join(stressed))["compound"]
            parts.append(f"The speaker stresses \"{' '.join(stressed)}\", which is {_polarity(s)} (VADER {s:+.2f}).")
        else:
            parts.append("No word is stressed.")
        stance = []
        hedges = [w for w in words if w in HEDGES]
        boosters = [w for w in words if w in BOOSTERS]
        if words and words[0] in DIRECTIVES:
            stance.append(f"gives a command (\"{words[0]}\")")
        if transcript.rstrip().endswith("?") or (words and words[0] in AUXILIARIES and "?" in transcript):
            stance.append("asks a question")
        if hedges:
            stance.append(f"hedges ({', '.join(dict.fromkeys(hedges))})")
        if boosters:
            stance.append(f"asserts firmly ({', '.join(dict.fromkeys(boosters))})")
        parts.append(("The speaker " + " and ".join(stance) + ".") if stance else "The speaker states plainly.")
        parts.append(f"Delivery: {prosody}.")
        return " ".join(parts)
