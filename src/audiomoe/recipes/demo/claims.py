"""The paper's analysis claims (gradient conflict, influence, specialisation, balance), checked on this run.

Each claim is a sentence, the paper's figure, this run's figure and a rule that says whether it holds here."""

from __future__ import annotations

from typing import Any

# The paper's gradient cosines between audio categories (dense vs MoE adapter; Qwen3-1.7B, 8 experts top-4).
PAPER_COSINES = {
    "sound|music": (-0.020, 0.029),
    "speech|music": (0.013, 0.023),
    "speech|sound": (0.012, 0.028),
}
# The paper's category x expert activation cells: "most 41-57%" at a uniform 50%, as multiples of uniform.
PAPER_CELL_BAND = (0.41 / 0.50, 0.57 / 0.50)
# The paper's look-ahead influence of a speech update (dense vs MoE; None: not reported).
PAPER_INFLUENCE = {"speech->music": (-0.117, None), "speech->sound": (-0.045, 0.056)}


def paper_claims(summary: dict[str, Any], dense: list[str], moe: str) -> list[dict[str, Any]]:
    """Each analysis claim of the paper: what it says, what this run measured, and whether it holds here
    (``reproduces``: True / False, None when this run could not measure it)."""
    ratio, cosine, influence = summary["conflict_ratio"], summary["mean_cosine"], summary["influence"]
    claims: list[dict[str, Any]] = []

    def claim(text: str, paper: str, here: str, holds: bool | None) -> None:
        claims.append({"claim": text, "paper": paper, "here": here, "reproduces": holds})

    known = [n for n in dense if ratio.get(n) is not None]
    if ratio.get(moe) is not None and known:
        claim(
            "the MoE adapter has a lower gradient conflict ratio between audio categories than a dense one",
            "lower conflict (all MoE cosines positive, one dense pair negative)",
            ", ".join(f"{n} {ratio[n]:.2f}" for n in known + [moe]),
            all(ratio[moe] < ratio[n] for n in known),
        )
    pairs = [p for p in PAPER_COSINES if cosine.get(p, {}).get(moe) is not None]
    if pairs:
        claim(
            "the MoE's gradient cosines between audio categories are all positive",
            ", ".join(f"{pair_title(p)} {PAPER_COSINES[p][1]:+.3f}" for p in PAPER_COSINES),
            ", ".join(f"{pair_title(p)} {cosine[p][moe]:+.3f}" for p in pairs),
            all(cosine[p][moe] > 0 for p in pairs),
        )
        wins = {
            n: sum(cosine[p].get(n) is not None and cosine[p][moe] > cosine[p][n] for p in pairs)
            for n in dense
        }
        claim(
            "the MoE's cosine exceeds the dense adapter's on every category pair",
            "3 of 3 pairs",
            ", ".join(f"vs {n}: {w} of {len(pairs)}" for n, w in wins.items()),
            all(w == len(pairs) for w in wins.values()),
        )
    if moe in influence and all(n in influence for n in dense):
        hurt = {n: (influence[n]["speech->music"], influence[n]["speech->sound"]) for n in dense}
        claim(
            "a speech update hurts music and sound in a dense adapter (signs compared: the size scales with "
            f"the step, {summary['config']['influence_lr']} here, not known for the paper)",
            "speech→music −0.117, speech→sound −0.045",
            "; ".join(f"{n}: {music:+.4f}, {sound:+.4f}" for n, (music, sound) in hurt.items()),
            all(music < 0 and sound < 0 for music, sound in hurt.values()),
        )
        claim(
            "a speech update helps sound in the MoE adapter",
            "speech→sound +0.056",
            f"speech→sound {influence[moe]['speech->sound']:+.4f}",
            influence[moe]["speech->sound"] > 0,
        )
    category = summary["nmi"].get(moe, {}).get("category")
    if category:
        claim(
            "expert choice depends on the audio category (rule here: NMI ≥ 0.05 and ≥ 10× its shuffled "
            "level)",
            "category-dependent activation heat map (no NMI reported)",
            f"NMI {category['nmi']:.3f} vs chance {category['chance']:.4f}",
            category["nmi"] >= 0.05 and category["nmi"] >= 10 * category["chance"],
        )
    balance = summary["balance"].get(moe)
    if balance and "category_cells" in balance:
        claim(
            "with the balance loss the load stays balanced (rule here: no dead expert, max/mean < 1.5)",
            "balanced with the loss; without it two experts take 97–98% of tokens",
            f"max/mean {balance['max_over_mean']:.2f}, CV {balance['cv']:.2f}, "
            f"dead experts {balance['dead_experts'] or 'none'}",
            not balance["dead_experts"] and balance["max_over_mean"] < 1.5,
        )
        cells = balance["category_cells"]
        in_band = cells["share_in_paper_band"]
        claim(
            "per category, most experts are active near the uniform level k/E (rule here: most speech / "
            "sound / music × expert cells within the paper's 41–57% band scaled to this k/E)",
            "most cells 41–57% at a uniform 50%",
            f"cells {cells['min']:.0%}–{cells['max']:.0%} at a uniform {cells['uniform']:.0%}, {in_band:.0%} "
            "of them in the band" + (" (routing is more category-specific here)" if in_band < 0.5 else ""),
            in_band >= 0.5,
        )
    return claims


def pair_title(key: str) -> str:
    """``"sound|music"`` -> ``"Sound–Music"``."""
    return "–".join(part.capitalize() for part in key.split("|"))
