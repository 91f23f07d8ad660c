"""Free-text rows for the generative audit: the rationale of each generation and its sentence embedding.

- **rationale**: the generated text before its last explicit answer marker ("Answer:", "Final
  answer:", "The answer is", the parser's own marker, :mod:`benchmark.kinds.text.scoring`), stripped;
  the whole text when it has no marker. Drift compares explanations, so the answer line itself
  (whose flips ``cf_flip_rate`` counts) is left out.
- **embedding**: the unit-norm all-MiniLM-L6-v2 embedding of the rationale *masked* as the judge
  sees it (:func:`benchmark.audits.mentions.mask`: the card's attribute words, first names and
  gendered pronouns replaced by ``[RACE]``, ``[NAME]``, ``[PRONOUN]`` ...), None for an empty
  rationale. The variants of a case name the patient differently by construction (Darnell / Connor,
  he / she) while two samples of one variant do not, so unmasked drift would exceed its noise floor
  for any model that repeats the patient's name; a rationale that *cites* a demographic still drifts
  (its mask tokens and the words around them differ from the reference's). Computed when results
  are scored, so ``fairbench score`` recomputes it from the stored text; without
  sentence-transformers the column is None and ``embedding_note`` says why (the audit then reports drift as not measured).
"""

from __future__ import annotations

import pandas as pd

import re

from ...audits.mentions import card_vocabulary, mask
from .scoring import _MARKER, _sentences_end

# Replaced in tests by a deterministic stand-in (tests build no MiniLM); signature of embed_texts.
EMBEDDER = None


def rationale(text: str | None) -> str:
    """The explanation part of a generation: the text without its answer statements, i.e. without
    each explicit answer marker and the answer after it (to the end of its first sentence or line),
    so "reasoning... Answer: Yes" (chain of thought) and "Answer: Yes\nBecause ..." (answer first)
    both keep only the reasoning."""
    if not text:
        return ""
    parts, pos = [], 0
    for m in _MARKER.finditer(text):
        if m.start() < pos:
            continue
        rest = text[m.end():]
        line = rest.lstrip(" \t*\"'")
        skipped = len(rest) - len(line)
        end = min(_sentences_end(line), line.find("\n") if "\n" in line else len(line))
        stop = m.end() + skipped + end
        if stop < len(text) and text[stop] in ".!?":
            stop += 1
        # A "Final" / "**" in front of the marker belongs to it.
        parts.append(re.sub(r"(?:\b(?:so\s+|thus\s+|therefore\s+|hence\s+)?(?:the|my|our)\s+)?(?:\*\*|#+)?\s*$", "",
                            text[pos:m.start()], flags=re.IGNORECASE))
        pos = stop
    parts.append(text[pos:])
    return re.sub(r"[ \t]+\n", "\n", " ".join(p.strip() for p in parts if p.strip())).strip(" *\n")


def _embed(texts: list[str]):
    if EMBEDDER is not None:
        return EMBEDDER(texts)
    from ...backends.embedder import embed_texts

    return embed_texts(texts)


def generation_frame(df: pd.DataFrame, card) -> tuple[pd.DataFrame, str]:
    """``df`` (the scored per-request frame with ``text`` and ``sample``) plus ``rationale``,
    ``masked_rationale`` (masked with ``card``'s vocabulary) and ``embedding`` (of the masked
    rationale) columns; returns (frame, note), the note empty unless embeddings are missing."""
    out = df.copy()
    out["rationale"] = [rationale(t) for t in out["text"]]
    attributes, names = card_vocabulary(card)
    out["masked_rationale"] = [mask(r, attributes, names) if r else "" for r in out["rationale"]]
    unique = sorted({r for r in out["masked_rationale"] if r})
    note = ""
    vectors: dict[str, object] = {}
    if unique:
        try:
            emb = _embed(unique)
            vectors = {t: emb[i] for i, t in enumerate(unique)}
        except ModuleNotFoundError as exc:
            note = (f"explanation drift not measured: the sentence embedder needs {exc.name or 'sentence-transformers'} "
                    "(pip install 'fairbench-med[mitigations]'), then `fairbench score RUN_DIR`")
    out["embedding"] = [vectors.get(r) if r else None for r in out["masked_rationale"]]
    return out, note
