"""The themes of survey comments: the words and two-word phrases most comments share, in English
and Italian, each with how many comments use it and how those comments scored.

Counted per comment (a word said three times in one comment counts once). Function words of both
languages are left out; negations (``not``, ``never``, ``non``, ``mai``) and evaluative words are
kept, because they carry the theme ("non arrivato", "never arrived"). The stop lists are short on
purpose: general-purpose lists drop words like "good", "order" or "late" that are the very themes
a CX team looks for.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from itertools import pairwise
from typing import Any

ENGLISH = frozenset(
    [
        "a",
        "about",
        "above",
        "after",
        "again",
        "all",
        "also",
        "am",
        "an",
        "and",
        "any",
        "are",
        "as",
        "at",
        "be",
        "because",
        "been",
        "before",
        "being",
        "below",
        "between",
        "both",
        "but",
        "by",
        "can",
        "could",
        "did",
        "do",
        "does",
        "doing",
        "down",
        "during",
        "each",
        "few",
        "for",
        "from",
        "further",
        "had",
        "has",
        "have",
        "having",
        "he",
        "her",
        "here",
        "hers",
        "herself",
        "him",
        "himself",
        "his",
        "how",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "itself",
        "just",
        "me",
        "more",
        "most",
        "my",
        "myself",
        "now",
        "of",
        "off",
        "on",
        "once",
        "only",
        "or",
        "other",
        "our",
        "ours",
        "ourselves",
        "out",
        "over",
        "own",
        "same",
        "she",
        "should",
        "so",
        "some",
        "such",
        "than",
        "that",
        "the",
        "their",
        "theirs",
        "them",
        "themselves",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "through",
        "to",
        "too",
        "under",
        "until",
        "up",
        "very",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "while",
        "who",
        "whom",
        "why",
        "will",
        "with",
        "would",
        "you",
        "your",
        "yours",
        "yourself",
        "yourselves",
        "i'm",
        "it's",
        "im",
        "ive",
        "i've",
        "don't",
        "didn't",
        "got",
        "get",
        "one",
        "really",
        "much",
    ]
)
ITALIAN = frozenset(
    [
        "a",
        "ad",
        "al",
        "alla",
        "alle",
        "allo",
        "agli",
        "ai",
        "all",
        "anche",
        "avere",
        "avevo",
        "aveva",
        "avete",
        "avuto",
        "c",
        "che",
        "chi",
        "ci",
        "cioè",
        "come",
        "con",
        "cosa",
        "così",
        "cui",
        "da",
        "dal",
        "dalla",
        "dalle",
        "dallo",
        "dagli",
        "dai",
        "degli",
        "dei",
        "del",
        "della",
        "delle",
        "dello",
        "di",
        "dove",
        "e",
        "è",
        "ed",
        "era",
        "erano",
        "essere",
        "fa",
        "fare",
        "fatto",
        "gli",
        "ha",
        "hanno",
        "ho",
        "i",
        "il",
        "in",
        "io",
        "l",
        "la",
        "le",
        "lei",
        "li",
        "lo",
        "loro",
        "lui",
        "ma",
        "me",
        "mi",
        "mia",
        "mie",
        "miei",
        "mio",
        "ne",
        "nei",
        "nel",
        "nella",
        "nelle",
        "nello",
        "noi",
        "o",
        "per",
        "perché",
        "però",
        "più",
        "poi",
        "qua",
        "quale",
        "quando",
        "quanto",
        "quella",
        "quelle",
        "quelli",
        "quello",
        "questa",
        "queste",
        "questi",
        "questo",
        "qui",
        "se",
        "sei",
        "si",
        "sia",
        "siamo",
        "siete",
        "sono",
        "sta",
        "stata",
        "stato",
        "su",
        "sua",
        "sue",
        "sui",
        "sul",
        "sulla",
        "suo",
        "suoi",
        "ti",
        "tra",
        "tu",
        "tua",
        "tue",
        "tuo",
        "tuoi",
        "tutto",
        "tutti",
        "un",
        "una",
        "uno",
        "vi",
        "voi",
        "è",
        "stato",
        "stata",
        "molto",
        "tanto",
        "ancora",
        "già",
        "solo",
        "sempre",
    ]
)
NEGATIONS = frozenset({"no", "not", "never", "non", "mai", "nessun", "niente"})
STOP = (ENGLISH | ITALIAN) - NEGATIONS
WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?", re.UNICODE)


def words(comment: str) -> list[str]:
    """The comment's words, lower-cased; Italian elisions split (``l'ordine`` → ``ordine``)."""
    out = []
    for token in WORD.findall(comment.lower()):
        if "'" in token:
            head, tail = token.split("'", 1)
            if head in STOP or len(head) <= 2:  # l', un', dell', all' … before a word
                token = tail
        out.append(token)
    return out


def themes(
    answers: Iterable[tuple[str, float | None]], *, top: int = 15, min_comments: int = 2
) -> dict[str, list[dict[str, Any]]]:
    """``{"words": [...], "phrases": [...]}`` from ``(comment, score)`` pairs: each theme with
    ``comments`` (how many use it) and ``mean_score`` of those that have a score."""
    word_n: Counter[str] = Counter()
    phrase_n: Counter[str] = Counter()
    scores: dict[str, list[float]] = {}
    for comment, score in answers:
        tokens = words(comment)
        # a negation alone says nothing; in a phrase ("non arrivato") it does
        kept = {t for t in tokens if t not in STOP and len(t) > 2} - NEGATIONS
        phrases = {
            f"{a} {b}"
            for a, b in pairwise(tokens)
            if b not in STOP and b not in NEGATIONS and len(b) > 2 and (a not in STOP or a in NEGATIONS)
        }
        for theme in kept | phrases:
            if score is not None:
                scores.setdefault(theme, []).append(float(score))
        word_n.update(kept)
        phrase_n.update(phrases)

    def listed(counts: Counter[str]) -> list[dict[str, Any]]:
        ranked = sorted((n, theme) for theme, n in counts.items() if n >= min_comments)
        ranked.sort(key=lambda x: (-x[0], x[1]))
        out = []
        for n, theme in ranked[:top]:
            given = scores.get(theme, [])
            out.append(
                {
                    "theme": theme,
                    "comments": n,
                    "mean_score": round(sum(given) / len(given), 2) if given else None,
                }
            )
        return out

    return {"words": listed(word_n), "phrases": listed(phrase_n)}
