"""Control arms (issue 24): which factor carries a difference in alignment tax.

The paper credits the semantic reward for GRPO's smaller tax; on-policy data alone may explain it
(RL's Razor, arXiv 2509.04259; Retaining by Doing, arXiv 2510.18874). A run that declares the
control arms beside GRPO separates the two with three comparisons, each of which changes one
factor (`ARM_COMPARISONS`):

- semantic GRPO vs RFT: the reward signal (policy gradient on the reward against SFT on the
  reward's best samples), with on-policy data on both sides;
- RFT vs SFT: on-policy samples against the references (off-policy data);
- semantic vs surface GRPO: the reward's kind (an encoder's similarity against chrF / BLEU).

Arms are found in the stage graph (`train.stages`), never by name: a grpo stage is the semantic
arm when its rewards (`stage_rewards`) have an encoder component, else the surface arm; an rft
stage is the RFT arm; and an sft stage that trains on the arms' prompts' references, with no RL
stage upstream, is the SFT arm. The grpo and rft arms start from one stage, the reference every
method's task gain is measured from (the cold start in the paper's graph).

Every number has a paired bootstrap interval (`eval.stats`, `results.evidence`): a method's gain
over the reference over test examples, its tax against the base model over benchmark items
(continuous, accuracy), general texts (drift) or task prompts (task KL), and each comparison's
difference of the two. The training budget each arm consumed is counted from its manifest and
its config section, so a reader knows whether a comparison is at equal budget; where two stages
fill one role (strong SFT, and an SFT arm sized to RFT's prompts), a comparison takes the one at
its other arm's budget.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from semrl.config.experiment import ExperimentConfig
from semrl.config.rewards import ENCODER_REWARDS, RewardsConfig
from semrl.results.evidence import PRIMARY_TAX_MEASURES, method_tax, tax_difference
from semrl.train.stages import BASE_METHOD, BASELINE, TREATMENT, StageSpec, stage_order, stage_rewards

# Roles a stage can play, and how the report names them.
ROLE_LABELS = {
    "semantic_grpo": "semantic GRPO",
    "surface_grpo": "surface-reward GRPO",
    "rft": "RFT",
    "sft": "SFT",
}
# The roles only a run with control arms has (the paper's graph has semantic GRPO and SFT).
CONTROL_ROLES = ("rft", "surface_grpo")
# (role a, role b, the one factor that differs between them).
ARM_COMPARISONS: tuple[tuple[str, str, str], ...] = (
    ("semantic_grpo", "rft", "the reward signal, with on-policy data on both sides"),
    ("rft", "sft", "on-policy vs off-policy data"),
    ("semantic_grpo", "surface_grpo", "the reward's kind, semantic vs surface"),
)
# Task metrics whose gain over the reference is reported; chrF is the headline (no arm's reward
# is an encoder's similarity to it, so it does not favour the semantic arm).
GAIN_METRICS = ("chrf", "semantic")
GAIN_DIGITS = {"chrf": 2, "semantic": 3}
# Two arms are at equal budget when their training prompts differ by at most this share.
BUDGET_TOLERANCE = 0.10
TAX_DIGITS = 4


def has_semantic_reward(rewards: RewardsConfig) -> bool:
    """Whether a reward has a component scored by the sentence encoder (semantic, source_grounded)."""
    return any(c.name in ENCODER_REWARDS and c.weight != 0 for c in rewards.components)


def _reference(config: ExperimentConfig, specs: list[StageSpec]) -> str:
    """The stage the RL arms start from: the semantic GRPO's parent (the treatment's first), else
    the first rft or grpo stage's; the base model when that parent is none."""
    rl = [s for s in specs if s.kind in ("grpo", "rft")]
    semantic = [s for s in rl if s.kind == "grpo" and has_semantic_reward(stage_rewards(config, s.name))]
    ordered = sorted(semantic, key=lambda s: s.name != TREATMENT) + [s for s in rl if s not in semantic]
    parent = ordered[0].parent if ordered else None
    return parent if parent is not None else BASE_METHOD


def arm_roles(config: ExperimentConfig, methods: list[str]) -> tuple[str | None, dict[str, str]]:
    """The reference the arms start from and {role: stage} among the evaluated `methods` (see the
    module docstring). (None, {}) when no grpo or rft stage was evaluated, or its starting point
    was not."""
    reference, candidates = role_candidates(config, methods)
    return reference, preferred_roles(candidates)


def preferred_roles(candidates: dict[str, list[str]]) -> dict[str, str]:
    """{role: stage}: the built-in `grpo` and `sft` where they fill their role, else the first."""
    preferred = {"semantic_grpo": TREATMENT, "sft": BASELINE}
    return {
        role: next((name for name in group if name == preferred.get(role)), group[0])
        for role, group in candidates.items()
        if group
    }


def role_candidates(config: ExperimentConfig, methods: list[str]) -> tuple[str | None, dict[str, list[str]]]:
    """The reference the arms start from and, per role, every evaluated stage that can fill it (in
    stage order): a run may hold, say, strong SFT and an SFT arm sized to RFT's budget."""
    specs = [s for s in stage_order(config.stages) if s.name in methods]
    if not any(s.kind in ("grpo", "rft") for s in specs):
        return None, {}
    reference = _reference(config, specs)
    if reference not in methods:
        return None, {}
    by_name = {s.name: s for s in stage_order(config.stages)}

    def upstream_rl(spec: StageSpec) -> bool:
        parent = spec.parent
        while parent is not None and parent in by_name:
            if by_name[parent].kind in ("grpo", "rft"):
                return True
            parent = by_name[parent].parent
        return False

    from_reference = [s for s in specs if (s.parent or BASE_METHOD) == reference]
    candidates: dict[str, list[StageSpec]] = {
        "semantic_grpo": [
            s for s in from_reference if s.kind == "grpo" and has_semantic_reward(stage_rewards(config, s.name))
        ],
        "surface_grpo": [
            s for s in from_reference if s.kind == "grpo" and not has_semantic_reward(stage_rewards(config, s.name))
        ],
        "rft": [s for s in from_reference if s.kind == "rft"],
    }
    rl_splits = {split for group in candidates.values() for s in group for split in s.splits}
    candidates["sft"] = [
        s for s in specs if s.kind == "sft" and s.name != reference and not upstream_rl(s) and rl_splits & set(s.splits)
    ]
    return reference, {role: [s.name for s in group] for role, group in candidates.items()}


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def training_budget(config: ExperimentConfig, stage: str, record: dict[str, Any] | None) -> dict[str, Any] | None:
    """The training data a finished stage consumed, from its manifest (`record`: metrics.json's
    training entry) and its config section: `prompts` (GRPO: steps x prompts per step; RFT: prompts
    sampled from; SFT: examples x epochs, or steps x batch under max_steps), `trained_examples`
    (sequences with a gradient: GRPO's completions, RFT's kept samples x epochs) and `counted`, how.
    None when the manifest lacks what is needed."""
    steps = ((record or {}).get("metrics") or {}).get("global_step")
    if steps is None:
        return None
    cfg = config.stages.section(stage)
    extra = (record or {}).get("extra") or {}
    if cfg.kind == "grpo":
        # Each generation batch is reused num_iterations times (TRL's mu): fewer fresh prompts.
        iterations = int(cfg.trl.get("num_iterations", 1) or 1)
        per_step = cfg.batch_size / cfg.num_generations
        prompts = round(steps * per_step / iterations)
        counted = f"{_count(steps, 'step')} x {per_step:g} prompts" + (
            f" / {iterations} iterations" if iterations > 1 else ""
        )
        return {
            "steps": steps,
            "prompts": prompts,
            "trained_examples": steps * cfg.batch_size,
            "counted": f"{counted}, {cfg.num_generations} completions each",
        }
    n = extra.get("num_examples")
    if n is None:
        return None
    if cfg.max_steps > 0:  # the trainer ignores epochs and cycles the data
        trained, how = steps * cfg.batch_size, f"{_count(steps, 'step')} x {cfg.batch_size}"
    else:
        trained, how = round(n * cfg.epochs), f"{n} x {cfg.epochs:g} epoch{'' if cfg.epochs == 1 else 's'}"
    if cfg.kind == "rft":
        rft = extra.get("rft") or {}
        if "prompts" not in rft:
            return None
        return {
            "steps": steps,
            "prompts": rft["prompts"],
            "trained_examples": trained,
            "counted": f"{rft['prompts']} prompts x {rft['num_generations']} samples; trained on the kept: {how}",
        }
    return {"steps": steps, "prompts": trained, "trained_examples": trained, "counted": f"examples: {how}"}


def budgets_matched(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool | None:
    """Whether two budgets' training prompts agree within `BUDGET_TOLERANCE`; None when unknown."""
    if not a or not b:
        return None
    pa, pb = a["prompts"], b["prompts"]
    return abs(pa - pb) <= BUDGET_TOLERANCE * max(pa, pb)


def gain_per_tax(gain: dict[str, float] | None, tax: dict[str, float] | None) -> dict[str, Any]:
    """Task gain per unit of tax, given only where the tax's interval lies above zero: over a tax
    not distinguishable from zero the ratio is noise. {"value": ratio or None, "reading"}."""
    if not gain or not tax:
        return {"value": None, "reading": "no gain or no tax measured"}
    if tax["low"] > 0:
        return {"value": gain["estimate"] / tax["estimate"], "reading": "ratio"}
    if tax["high"] < 0:
        return {"value": None, "reading": "tax below 0 (general scores rose)"}
    return {"value": None, "reading": "tax not distinguishable from 0"}


def headline_measure(primary: str, available: list[str] | dict[str, Any]) -> str | None:
    """The run's primary tax measure when it was measured, else the first that was."""
    if primary in available:
        return primary
    return next((m for m in PRIMARY_TAX_MEASURES if m in available), None)


def arms_summary(
    config: ExperimentConfig,
    evals: dict[str, dict[str, Any]],
    training: dict[str, Any],
    boot: dict[str, Any],
    differences: Callable[[str, str], dict[str, Any]],
) -> dict[str, Any] | None:
    """metrics.json's `arms`: every trained method's gain over the reference and tax against the
    base model with intervals, gain per tax and training budget; and each of `ARM_COMPARISONS`
    whose two arms were evaluated. `differences(a, b)` gives the paired task differences a - b.
    None when no trained method beyond the reference was evaluated."""
    methods = list(evals)
    reference, candidates = role_candidates(config, methods)
    roles = preferred_roles(candidates)
    trained = [m for m in methods if m not in (BASE_METHOD, reference)]
    if reference is None or not trained:
        return None
    primary = config.evaluation.primary_tax
    role_of = {stage: role for role, group in candidates.items() for stage in group}
    rows: dict[str, Any] = {}
    for m in [reference, *trained] if reference != BASE_METHOD else trained:
        tax = {}
        if BASE_METHOD in evals:
            tax = {
                k: iv for k in PRIMARY_TAX_MEASURES if (iv := method_tax(evals, m, BASE_METHOD, k, boot)) is not None
            }
        gain = {} if m == reference else {k: v for k, v in differences(m, reference).items() if k in GAIN_METRICS}
        measure = headline_measure(primary, tax)
        rows[m] = {
            "kind": config.stages.section(m).kind,
            "role": "reference" if m == reference else role_of.get(m),
            "gain": gain,
            "tax": tax,
            "gain_per_tax": {
                "measure": measure,
                **gain_per_tax(gain.get("chrf"), tax.get(measure) if measure else None),
            },
            "budget": training_budget(config, m, training.get(m)),
        }
    comparisons: dict[str, Any] = {}
    for ra, rb, isolates in ARM_COMPARISONS:
        if ra not in roles or rb not in roles:
            continue
        a, b = roles[ra], roles[rb]
        # The matched-budget rule: where another stage fills b's role at a's budget, compare with it.
        if not budgets_matched(rows[a]["budget"], rows[b]["budget"]):
            b = next((s for s in candidates[rb] if budgets_matched(rows[a]["budget"], rows[s]["budget"])), b)
        tax_diffs = {k: d for k in PRIMARY_TAX_MEASURES if (d := tax_difference(evals, a, b, k, boot)) is not None}
        for d in tax_diffs.values():
            d.pop("measure", None)
        comparisons[f"{a}-{b}"] = {
            "a": a,
            "b": b,
            "roles": [ra, rb],
            "isolates": isolates,
            "gain": {k: v for k, v in differences(a, b).items() if k in GAIN_METRICS},
            "tax": tax_diffs,
            "headline": headline_measure(primary, tax_diffs),
            "budget_matched": budgets_matched(rows[a]["budget"], rows[b]["budget"]),
        }
    return {
        "reference": reference,
        "primary": primary,
        "budget_tolerance": BUDGET_TOLERANCE,
        "roles": roles,
        "methods": rows,
        "comparisons": comparisons,
    }


def has_control_arms(arms: dict[str, Any] | None) -> bool:
    """Whether a run's `arms` hold a control arm (RFT or a surface-reward GRPO): the report then
    gets the comparisons, the budget rule and the arms plot."""
    return bool(arms) and any(role in arms["roles"] for role in CONTROL_ROLES)


# ---------------------------------------------------------------------------------------------
# Plain readings, shared by the verdict and the report
# ---------------------------------------------------------------------------------------------
def interval_text(iv: dict[str, float], digits: int) -> str:
    """'+0.012 [-0.003, +0.027]'."""
    return f"{iv['estimate']:+.{digits}f} [{iv['low']:+.{digits}f}, {iv['high']:+.{digits}f}]"


def plain_reading(iv: dict[str, float], who: str, what: str, digits: int) -> str:
    """A paired difference in words: "<who>'s <what> lower", "... higher", or "no difference
    larger than X" (the interval's farthest end: at the run's confidence the difference is within it)."""
    if iv["high"] < 0:
        return f"{who}'s {what} lower"
    if iv["low"] > 0:
        return f"{who}'s {what} higher"
    return f"no difference larger than {max(abs(iv['low']), abs(iv['high'])):.{digits}f}"


def comparison_label(c: dict[str, Any]) -> str:
    """'semantic GRPO (grpo) vs RFT (rft)'."""
    ra, rb = c["roles"]
    return f"{ROLE_LABELS[ra]} ({c['a']}) vs {ROLE_LABELS[rb]} ({c['b']})"


MEASURE_SHORT = {
    "continuous": "continuous tax",
    "accuracy": "accuracy tax",
    "drift": "NLL drift",
    "task_kl": "task KL",
}


def budget_sentence(arms: dict[str, Any], key: str) -> str:
    """Whether a comparison's two arms trained on the same number of prompts, in one sentence."""
    c = arms["comparisons"][key]
    ba, bb = arms["methods"][c["a"]]["budget"], arms["methods"][c["b"]]["budget"]
    label = comparison_label(c)
    if not ba or not bb:
        missing = " and ".join(m for m, b in ((c["a"], ba), (c["b"], bb)) if not b)
        return f"{label}: the training budget of {missing} is not recorded, so equal budget cannot be checked."
    pa, pb = ba["prompts"], bb["prompts"]
    shown = f"{label}: {pa} vs {pb} training prompts"
    if c["budget_matched"]:
        return f"{shown}, matched within {arms['budget_tolerance']:.0%}: the tax comparison is at equal budget."
    more, less = (c["a"], c["b"]) if pa > pb else (c["b"], c["a"])
    ratio = max(pa, pb) / max(min(pa, pb), 1)
    return (
        f"{shown}, not matched ({more} drew {ratio:.2f}x as many as {less}): the tax comparison is not at equal budget."
    )


def arms_reading(metrics: dict[str, Any], conf: int) -> str:
    """The verdict's part on the control arms: each comparison's difference in tax (its headline
    measure) and in chrF gain with their paired intervals and plain readings, then which
    comparison carries the effect. Empty without a control arm."""
    arms = metrics.get("arms")
    if not has_control_arms(arms) or not arms["comparisons"]:
        return ""
    parts = []
    separated, flat = [], []
    for key, c in arms["comparisons"].items():
        measure = c["headline"]
        shown = f"{comparison_label(c)}, which isolates {c['isolates']}: "
        if measure is None:
            parts.append(shown + "no tax measure was scored for both.")
            continue
        d = c["tax"][measure]
        tax_reading = plain_reading(d, c["a"], "tax", TAX_DIGITS)
        shown += f"{MEASURE_SHORT[measure]} difference {interval_text(d, TAX_DIGITS)}, {tax_reading}"
        gain = c["gain"].get("chrf")
        if gain is not None:
            shown += f"; chrF difference {interval_text(gain, 2)}, {plain_reading(gain, c['a'], 'chrF', 2)}"
        parts.append(shown + ".")
        (flat if d["reading"] == "not separated" else separated).append((key, c, tax_reading))
    out = f" Control arms ({conf}% paired intervals, first arm minus second): " + " ".join(parts)
    if separated:
        carried = "; ".join(f"{c['isolates']} ({comparison_label(c)}: {reading})" for _, c, reading in separated)
        out += f" The tax difference is carried by {carried}"
        unequal = [comparison_label(c) for _, c, _ in separated if c["budget_matched"] is not True]
        out += (
            f", at unequal or unrecorded training budgets ({'; '.join(unequal)}; see Control arms)." if unequal else "."
        )
        if flat:
            out += (
                " The other comparisons do not separate their arms' taxes: "
                + "; ".join(f"{c['isolates']} ({comparison_label(c)})" for _, c, _ in flat)
                + "."
            )
    else:
        out += (
            " No comparison separates the arms' taxes, so this run does not say which factor carries a tax difference."
        )
    return out
