"""The documented schema of metrics.json, key by key, next to the code that writes it (`build.py`).

It describes and does not drive: `build_metrics` writes the file, this table says what each key
means. The reference page docs/reference/metrics.md is generated from it (scripts/gen_docs.py), and
tests/test_docs.py checks it against the metrics.json of a real tiny run both ways: every key the
run writes is documented here, and every key marked required is in the run.

Paths are dotted. A segment in angle brackets stands for a family of keys: ``<method>`` (``base``
and every evaluated stage), ``<stage>``, ``<benchmark>`` (``cmrc2018``, ``mmlu``, ``gsm8k`` or an
lm-eval task name), ``<metric>`` (a task metric), ``<a>-<b>`` (a pair of methods), ``<split>``,
``<measure>`` (a tax measure), ``<role>`` (a control-arm role), ``<test>`` (an extra test set) and
``<monitor>``. The type ``interval`` is an object ``{"estimate", "low", "high"}`` (a bootstrap
percentile interval at `evaluation.confidence`), and ``open`` marks an object whose inner keys are
not listed (they follow the config, the installed packages or the trainer).
"""

from __future__ import annotations

from dataclasses import dataclass

from semrl.results.build import SCHEMA_VERSION


@dataclass(frozen=True)
class MetricsKey:
    """One documented key of metrics.json."""

    path: str
    type: str
    description: str
    required: bool = True  # present in every run with a base model, sft and grpo, and a GRPO log


def _key(path: str, type_: str, description: str, required: bool = True) -> MetricsKey:
    return MetricsKey(path, type_, description, required)


METRICS_KEYS: tuple[MetricsKey, ...] = (
    _key("schema_version", "int", f"The version of this schema ({SCHEMA_VERSION})."),
    # -- per method ---------------------------------------------------------------------------
    _key("methods", "object", "One entry per evaluated method: `base` and every evaluated stage."),
    _key(
        "methods.<method>.distinct_output_rate",
        "number",
        "Distinct output texts per distinct test source (1.0: no two different sources answered alike).",
    ),
    _key(
        "methods.<method>.distinct_sources",
        "int",
        "How many distinct sources the test rows hold (a source on several rows has several references).",
        required=False,
    ),
    _key(
        "methods.<method>.repetitive_output_rate",
        "number",
        "Share of test outputs that repeat themselves (over 15% of their 4-grams repeated, SG-SRL's rule).",
        required=False,
    ),
    _key("methods.<method>.task", "object", "Task quality on the test split."),
    _key("methods.<method>.task.bleu", "number", "Corpus BLEU (sacrebleu; `zh` tokenisation for Chinese)."),
    _key("methods.<method>.task.bleu_signature", "string", "sacrebleu's signature of that BLEU."),
    _key("methods.<method>.task.chrf", "number", "Corpus chrF (sacrebleu)."),
    _key("methods.<method>.task.chrf_signature", "string", "sacrebleu's signature of that chrF."),
    _key(
        "methods.<method>.task.rouge_l",
        "number",
        "ROUGE-L on Tibetan syllables / Chinese characters (headline tasks only).",
        required=False,
    ),
    _key("methods.<method>.task.semantic", "number", "Mean cosine similarity to the reference (the reward's encoder)."),
    _key(
        "methods.<method>.task.semantic_2",
        "number",
        "The same with `evaluation.second_encoder` (when configured).",
        required=False,
    ),
    _key(
        "methods.<method>.task.semantic_valid",
        "bool",
        "Whether the encoder passes `can_represent` for the output language (absent without a probe for it).",
        required=False,
    ),
    _key(
        "methods.<method>.task.semantic_note",
        "string",
        "Why the similarity is meaningless (when `semantic_valid` is false).",
        required=False,
    ),
    _key(
        "methods.<method>.task.semantic_2_valid",
        "bool",
        "`semantic_valid` for the second encoder.",
        required=False,
    ),
    _key(
        "methods.<method>.task.semantic_2_note",
        "string",
        "`semantic_note` for the second encoder.",
        required=False,
    ),
    _key("methods.<method>.task.lang_rate", "number", "Share of outputs written only in the target script."),
    _key("methods.<method>.task.length_ratio", "number", "Mean output length over reference length (characters)."),
    _key("methods.<method>.task.source_copy_rate", "number", "Share of outputs that copy their source (4-gram test)."),
    _key("methods.<method>.task.n", "int", "Test examples evaluated."),
    _key(
        "methods.<method>.task.chance",
        "object",
        "Chance floors: the same outputs scored against shuffled references (absent with fewer than two examples).",
    ),
    _key("methods.<method>.task.chance.bleu", "number", "BLEU against the shuffled references."),
    _key("methods.<method>.task.chance.chrf", "number", "chrF against the shuffled references."),
    _key("methods.<method>.task.chance.semantic", "number", "Similarity to the shuffled references."),
    _key(
        "methods.<method>.task.chance.semantic_2",
        "number",
        "The second encoder's similarity to them.",
        required=False,
    ),
    _key("methods.<method>.task.chance.reference_order", "list", "The shuffled order of the references (seeded)."),
    _key(
        "methods.<method>.chance",
        "object",
        "Each chance-floored metric (bleu, chrf, semantic, semantic_2) beside its floor.",
    ),
    _key("methods.<method>.chance.<metric>.value", "number", "The method's score."),
    _key("methods.<method>.chance.<metric>.floor", "number", "The score of the same outputs on shuffled references."),
    _key("methods.<method>.chance.<metric>.margin", "interval", "Score minus floor, paired over test examples."),
    _key("methods.<method>.chance.<metric>.above_chance", "bool", "Whether the margin's interval lies above zero."),
    _key("methods.<method>.general", "object", "General-benchmark scores."),
    _key("methods.<method>.general.<benchmark>", "number", "The benchmark's score (lm-eval's metric for it)."),
    _key("methods.<method>.tax", "object", "Accuracy-style alignment tax: score(base) - score(method)."),
    _key("methods.<method>.tax.<benchmark>", "number", "The tax on one benchmark."),
    _key("methods.<method>.tax.mean", "number", "Its mean over the benchmarks."),
    _key("methods.<method>.tax_evidence", "object", "Per benchmark, the tax measures against base (not for `base`)."),
    _key("methods.<method>.tax_evidence.<benchmark>.metric", "string", "The benchmark's score metric."),
    _key("methods.<method>.tax_evidence.<benchmark>.n", "int", "Items."),
    _key(
        "methods.<method>.tax_evidence.<benchmark>.note",
        "string",
        "Why the items could not be paired (different subsets); the measures below are then absent.",
        required=False,
    ),
    _key(
        "methods.<method>.tax_evidence.<benchmark>.accuracy_tax",
        "interval",
        "Accuracy-style tax, paired over items.",
    ),
    _key("methods.<method>.tax_evidence.<benchmark>.flips", "object", "Paired flips against base."),
    _key("methods.<method>.tax_evidence.<benchmark>.flips.n", "int", "Paired items."),
    _key("methods.<method>.tax_evidence.<benchmark>.flips.lost", "int", "Right for base, wrong for the method."),
    _key("methods.<method>.tax_evidence.<benchmark>.flips.gained", "int", "Wrong for base, right for the method."),
    _key("methods.<method>.tax_evidence.<benchmark>.flips.p_value", "number", "McNemar's exact test."),
    _key(
        "methods.<method>.tax_evidence.<benchmark>.continuous_measure",
        "string",
        "What the continuous score is (MMLU: probability of the gold choice; CMRC 2018, GSM8K: gold answer "
        "log-likelihood per character).",
    ),
    _key("methods.<method>.tax_evidence.<benchmark>.continuous", "object", "Mean continuous score of each model."),
    _key("methods.<method>.tax_evidence.<benchmark>.continuous.base", "number", "The base model's."),
    _key("methods.<method>.tax_evidence.<benchmark>.continuous.method", "number", "The method's."),
    _key(
        "methods.<method>.tax_evidence.<benchmark>.continuous_tax",
        "interval",
        "Per-item continuous tax (base - method), paired over items.",
    ),
    _key(
        "methods.<method>.tax_evidence.<benchmark>.empty_share",
        "object",
        "Share of empty predictions (generative benchmarks).",
        required=False,
    ),
    _key("methods.<method>.tax_evidence.<benchmark>.empty_share.base", "number", "The base model's.", required=False),
    _key("methods.<method>.tax_evidence.<benchmark>.empty_share.method", "number", "The method's.", required=False),
    _key(
        "methods.<method>.tax_evidence.<benchmark>.empty_rise",
        "bool",
        "Empty predictions rose by at least a quarter of the items.",
        required=False,
    ),
    _key(
        "methods.<method>.tax_evidence.<benchmark>.format_change",
        "bool",
        "An accuracy drop that comes with empty answers while the gold answer's likelihood holds.",
        required=False,
    ),
    _key(
        "methods.<method>.task_kl",
        "interval",
        "Forward KL from the base model on the task distribution (`evaluation.task_kl_examples` > 0), with `n`.",
        required=False,
    ),
    _key("methods.<method>.task_kl.n", "int", "Dev prompts sampled from the base model.", required=False),
    _key("methods.<method>.drift", "object | null", "Drift on general text against base (null for `base`)."),
    _key("methods.<method>.drift.nll_mean", "number", "Mean NLL increase per token."),
    _key("methods.<method>.drift.nll_p90", "number", "Its 90th percentile over texts."),
    _key("methods.<method>.drift.kl_mean", "number", "Mean KL from the base model's next-token distribution."),
    _key("methods.<method>.drift.kl_p90", "number", "Its 90th percentile over texts."),
    # -- intervals ----------------------------------------------------------------------------
    _key("intervals", "object", "Bootstrap intervals of the task metrics, their differences and the tax."),
    _key("intervals.confidence", "number", "The confidence level (`evaluation.confidence`)."),
    _key("intervals.task", "object", "Per method, per-example task metrics."),
    _key("intervals.task.<method>.<metric>", "interval", "Over test examples."),
    _key("intervals.differences", "object", "Paired differences between methods (grpo-sft, grpo-cold_start, ...)."),
    _key("intervals.differences.<a>-<b>.<metric>", "interval", "Method a minus method b, paired over test examples."),
    _key("intervals.tax", "object", "Per method, the accuracy-style tax."),
    _key("intervals.tax.<method>.<benchmark>", "interval", "Paired over items."),
    _key("intervals.tax.<method>.mean", "interval", "The mean over benchmarks."),
    # -- the comparison the verdict rests on --------------------------------------------------
    _key("comparison", "object", "GRPO's tax minus SFT's on every measure."),
    _key("comparison.primary", "string", "The measure the verdict rests on (`evaluation.primary_tax`)."),
    _key("comparison.pair", "list", "The two methods compared: [grpo, sft]."),
    _key("comparison.measures", "object", "One entry per measure: continuous, accuracy, drift, task_kl."),
    _key("comparison.measures.<measure>", "interval", "tax(grpo) - tax(sft), paired."),
    _key("comparison.measures.<measure>.measure", "string", "The measure's name."),
    _key("comparison.measures.<measure>.reading", "string", "`lower`, `higher` or `not separated`."),
    # -- control arms (semrl.results.arms) ------------------------------------------------------
    _key(
        "arms",
        "object",
        "Every trained method's task gain over the stage the RL arms start from and its tax against base, with "
        "intervals, and the control-arm comparisons (absent without a grpo or rft stage evaluated beside it).",
        required=False,
    ),
    _key("arms.reference", "string", "The method gains are measured from (the grpo/rft arms' parent).", required=False),
    _key("arms.primary", "string", "`evaluation.primary_tax`, the headline tax measure.", required=False),
    _key(
        "arms.budget_tolerance",
        "number",
        "Two arms are at equal budget when their training prompts differ by at most this share.",
        required=False,
    ),
    _key(
        "arms.roles.<role>",
        "string",
        "The stage playing each role found in the stage graph: semantic_grpo, surface_grpo, rft, sft.",
        required=False,
    ),
    _key("arms.methods.<method>.kind", "string", "The stage kind: sft, grpo or rft.", required=False),
    _key(
        "arms.methods.<method>.role",
        "string | null",
        "Its role, `reference`, or null (a stage that is no arm, e.g. a recovery SFT).",
        required=False,
    ),
    _key(
        "arms.methods.<method>.gain.<metric>",
        "interval",
        "chrf, semantic: the method minus the reference, paired over test examples (empty for the reference).",
        required=False,
    ),
    _key(
        "arms.methods.<method>.tax.<measure>",
        "interval",
        "The method's tax against base: continuous, accuracy (paired over items, mean over benchmarks), drift "
        "(NLL increase over general texts), task_kl (forward KL over task prompts).",
        required=False,
    ),
    _key(
        "arms.methods.<method>.gain_per_tax",
        "object",
        "chrF gain per unit of the headline tax: `measure`, `value` (null unless the tax's interval lies above "
        "zero) and `reading` (ratio, tax not distinguishable from 0, tax below 0, ...).",
        required=False,
    ),
    _key("arms.methods.<method>.gain_per_tax.measure", "string | null", "The tax measure divided by.", required=False),
    _key("arms.methods.<method>.gain_per_tax.value", "number | null", "The ratio.", required=False),
    _key("arms.methods.<method>.gain_per_tax.reading", "string", "Why there is no ratio, or `ratio`.", required=False),
    _key(
        "arms.methods.<method>.budget",
        "object | null",
        "Training budget from the manifest and the stage config (null when not recorded).",
        required=False,
    ),
    _key("arms.methods.<method>.budget.steps", "int", "Optimizer steps.", required=False),
    _key(
        "arms.methods.<method>.budget.prompts",
        "int",
        "Training prompts: GRPO steps x prompts per step; RFT prompts sampled from; SFT examples x epochs.",
        required=False,
    ),
    _key(
        "arms.methods.<method>.budget.trained_examples",
        "int",
        "Sequences with a gradient: GRPO's completions, RFT's kept samples x epochs, SFT's examples x epochs.",
        required=False,
    ),
    _key("arms.methods.<method>.budget.counted", "string", "How the counts were made.", required=False),
    _key(
        "arms.comparisons.<a>-<b>",
        "object",
        "One per comparison whose two arms were evaluated: semantic GRPO vs RFT, RFT vs SFT, semantic vs surface GRPO.",
        required=False,
    ),
    _key("arms.comparisons.<a>-<b>.a", "string", "The first arm's method.", required=False),
    _key("arms.comparisons.<a>-<b>.b", "string", "The second arm's method.", required=False),
    _key("arms.comparisons.<a>-<b>.roles", "list", "Their roles.", required=False),
    _key("arms.comparisons.<a>-<b>.isolates", "string", "The one factor the two arms differ in.", required=False),
    _key(
        "arms.comparisons.<a>-<b>.gain.<metric>",
        "interval",
        "chrf, semantic: a minus b, paired over test examples.",
        required=False,
    ),
    _key(
        "arms.comparisons.<a>-<b>.tax.<measure>",
        "interval",
        "tax(a) - tax(b), paired, with `reading` (lower, higher, not separated).",
        required=False,
    ),
    _key(
        "arms.comparisons.<a>-<b>.tax.<measure>.reading",
        "string",
        "`lower`, `higher` or `not separated`.",
        required=False,
    ),
    _key(
        "arms.comparisons.<a>-<b>.headline",
        "string | null",
        "The tax measure the verdict reads: the primary when measured, else the first that was.",
        required=False,
    ),
    _key(
        "arms.comparisons.<a>-<b>.budget_matched",
        "bool | null",
        "Whether the two arms' training prompts agree within `budget_tolerance` (null: a budget not recorded).",
        required=False,
    ),
    _key("signatures", "object", "sacrebleu signatures."),
    _key("signatures.bleu", "string", "BLEU's."),
    _key("signatures.chrf", "string", "chrF's."),
    # -- extra test sets ----------------------------------------------------------------------
    _key(
        "extra_tasks",
        "object",
        "Only with `evaluation.extra_tests`: one entry per extra test set (`<test>`, its name), the task "
        "measured on it as on the test split.",
        required=False,
    ),
    _key(
        "extra_tasks.<test>.source",
        "open",
        "Its source section, as in `data.sources` (its kind and the keys set away from their defaults).",
        required=False,
    ),
    _key("extra_tasks.<test>.scale", "object", "Where its rows came from (its manifest).", required=False),
    _key("extra_tasks.<test>.scale.examples", "int", "Examples evaluated.", required=False),
    _key("extra_tasks.<test>.scale.documents", "int", "Their documents.", required=False),
    _key("extra_tasks.<test>.scale.loaded", "int", "Rows the source gave.", required=False),
    _key(
        "extra_tasks.<test>.scale.available",
        "int",
        "Rows left after cleaning and the leakage rule (`limit` of them are evaluated).",
        required=False,
    ),
    _key(
        "extra_tasks.<test>.scale.cleaning",
        "open",
        "What each cleaning rule changed or dropped (the keys of the splits manifest's `cleaning`).",
        required=False,
    ),
    _key(
        "extra_tasks.<test>.scale.leakage",
        "object",
        "Rows dropped because their source or reference is in the run's training splits.",
        required=False,
    ),
    _key("extra_tasks.<test>.scale.leakage.rows_removed", "int", "Rows dropped.", required=False),
    _key("extra_tasks.<test>.scale.leakage.same_source", "int", "Of them, with a training source.", required=False),
    _key(
        "extra_tasks.<test>.scale.leakage.same_reference", "int", "Of them, with a training reference.", required=False
    ),
    _key("extra_tasks.<test>.scale.limit", "int | null", "`evaluation.extra_tests[].limit`.", required=False),
    _key(
        "extra_tasks.<test>.scale.max_source_chars",
        "int | null",
        "The length cap applied (its own, else `data.max_source_chars`).",
        required=False,
    ),
    _key("extra_tasks.<test>.methods", "object", "One entry per method evaluated on it.", required=False),
    _key(
        "extra_tasks.<test>.methods.<method>.task",
        "open",
        "The keys of `methods.<method>.task`, measured on this test set.",
        required=False,
    ),
    _key(
        "extra_tasks.<test>.methods.<method>.chance",
        "open",
        "The keys of `methods.<method>.chance`, on this test set.",
        required=False,
    ),
    _key(
        "extra_tasks.<test>.methods.<method>.distinct_output_rate",
        "number",
        "Distinct output texts per distinct source of the test.",
        required=False,
    ),
    _key(
        "extra_tasks.<test>.methods.<method>.distinct_sources",
        "int",
        "How many distinct sources its rows hold.",
        required=False,
    ),
    _key(
        "extra_tasks.<test>.methods.<method>.repetitive_output_rate",
        "number",
        "Share of its outputs that repeat themselves.",
        required=False,
    ),
    _key("extra_tasks.<test>.intervals", "object", "Its bootstrap intervals.", required=False),
    _key("extra_tasks.<test>.intervals.task.<method>.<metric>", "interval", "Over its examples.", required=False),
    _key(
        "extra_tasks.<test>.intervals.differences.<a>-<b>.<metric>",
        "interval",
        "Method a minus method b, paired over its examples.",
        required=False,
    ),
    # -- the judge ----------------------------------------------------------------------------
    _key("judge", "object", "LLM-judge win rates (only when RUN_DIR/eval/judge.json exists).", required=False),
    _key("judge.judge", "object", "The judge: `kind` (local, endpoint), `model`, `mode`, `url`.", required=False),
    _key("judge.judge.kind", "string", "`local` or `endpoint`.", required=False),
    _key("judge.judge.model", "string", "The judge model.", required=False),
    _key("judge.judge.mode", "string", "`logprob` or `generate`.", required=False),
    _key("judge.judge.url", "string", "The endpoint (endpoint judges).", required=False),
    _key("judge.confidence", "number", "Confidence level of the rates' intervals.", required=False),
    _key("judge.stale", "bool", "A compared method was re-evaluated since it was judged.", required=False),
    _key("judge.pairs.<a>-<b>.first", "string", "Method a.", required=False),
    _key("judge.pairs.<a>-<b>.second", "string", "Method b.", required=False),
    _key("judge.pairs.<a>-<b>.n", "int", "Examples judged.", required=False),
    _key("judge.pairs.<a>-<b>.judge_prompts", "int", "Prompts sent (two orders per example).", required=False),
    _key(
        "judge.pairs.<a>-<b>.counts",
        "object",
        "`win`, `tie`, `loss` (from a's side: a win needs both orders to prefer a), `inconsistent`, "
        "`identical`, `unparsed`.",
        required=False,
    ),
    _key("judge.pairs.<a>-<b>.counts.<count>", "int", "One of those counts.", required=False),
    _key("judge.pairs.<a>-<b>.rates.<rate>", "interval", "`win`, `tie` or `loss` rate.", required=False),
    _key(
        "judge.pairs.<a>-<b>.inconsistent_rate",
        "number",
        "Share of pairs whose two orders picked the same position.",
        required=False,
    ),
    _key(
        "judge.pairs.<a>-<b>.first_position_rate",
        "number | null",
        "Share of verdicts for the first position.",
        required=False,
    ),
    # -- scale, training, monitors --------------------------------------------------------------
    _key("scale", "object", "The run's scale, stated in the report."),
    _key("scale.model", "string", "`model.name`."),
    _key("scale.lora", "bool", "Whether LoRA was on."),
    _key("scale.split_sizes.<split>", "int", "Examples per split."),
    _key("scale.test_examples_evaluated", "int", "Test examples evaluated."),
    _key("scale.benchmark_items.<benchmark>", "int", "Items per benchmark."),
    _key("scale.steps.<stage>", "int", "Optimizer steps per stage."),
    _key(
        "scale.grpo_stages", "array", "The enabled GRPO-kind stages (the report names the reward only when one trains)."
    ),
    _key(
        "scale.stage_rewards.<stage>",
        "array",
        "Only when a stage has its own `rewards:` section: that stage's reward components (name, weight, ...).",
        required=False,
    ),
    _key("scale.encoder", "string", "The reward encoder."),
    _key("scale.hardware", "object | null", "Where and in which dtype the stages trained (from their manifests)."),
    _key("scale.hardware.cpu", "string", "CPU model."),
    _key("scale.hardware.cores", "int", "CPU cores."),
    _key("scale.hardware.torch_threads", "int", "torch threads."),
    _key("scale.hardware.gpu", "string | null", "GPU name, if any."),
    _key("scale.hardware.dtype", "string", "The training dtype."),
    _key("scale.hardware.dtype_reason", "string", "Why that dtype (`model.dtype: auto`'s choice)."),
    _key(
        "scale.compiled_layers",
        "array",
        "The stages whose decoder layers trained compiled (`stages.<stage>.compile_layers`; each stage's "
        "manifest says why: `extra.compiled_layers_reason`).",
        required=False,
    ),
    _key("scale.eval_dtype", "string", "`evaluation.dtype`."),
    _key("training", "object", "Per finished stage, from its manifest."),
    _key("training.<stage>.wall_time_s", "number", "Wall time of the stage."),
    _key("training.<stage>.peak_rss_mb", "number", "Peak resident memory of the process (MiB)."),
    _key("training.<stage>.metrics", "open", "The trainer's final metrics (global_step, train_loss, ...)."),
    _key("training.<stage>.extra", "open", "Stage details: hardware, tau (GRPO), reward weights, init model, ..."),
    _key("monitors", "object | null", "GRPO's reward-hacking monitors (null without a GRPO log)."),
    _key("monitors.rows", "int", "Logged GRPO steps."),
    _key("monitors.window", "int", "Rows per window (a quarter of them, at least one)."),
    _key(
        "monitors.series.<monitor>",
        "object",
        "length_ratio, mixed_script_rate, source_copy_rate, repetition_rate, zero_std_group_share, language_pass_rate.",
    ),
    _key("monitors.series.<monitor>.first", "number", "Mean over the first window."),
    _key("monitors.series.<monitor>.last", "number", "Mean over the last window."),
    _key("monitors.series.<monitor>.change", "number", "last - first."),
    _key("monitors.thresholds.<threshold>", "number", "The threshold of each flag (stated in the report)."),
    _key("monitors.flags", "list", "Raised flags: {monitor, statistic, value, threshold, message}."),
    _key("config", "open", "The resolved config."),
    _key("versions", "open", "Versions of the packages that produced the run."),
)
