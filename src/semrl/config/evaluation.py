"""The `evaluation` section: decoding, encoders, general benchmarks, drift, intervals, the judge."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from semrl.config.base import Section, check_plain_name
from semrl.config.data import SourceConfig
from semrl.config.rewards import EncoderConfig


class GenerationConfig(Section):
    """How the test outputs are generated."""

    do_sample: bool = Field(False, description="Sample the test outputs (false: greedy decoding).")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature (with do_sample).")
    top_p: float = Field(1.0, gt=0, le=1.0, description="Nucleus sampling (with do_sample).")
    max_new_tokens: int = Field(128, ge=1, description="Generated tokens per test output.")
    batch_size: int = Field(
        8,
        ge=1,
        description="Prompts per generation batch: the test outputs, the extra tests' and the general benchmarks' "
        "generated answers (on CPU each prompt of a benchmark's batch prefilled at its own length).",
    )


class BenchmarkConfig(Section):
    """One general benchmark of the tax instrument."""

    name: str = Field(description="'cmrc2018', 'mmlu', 'gsm8k', or any lm-evaluation-harness task name.")
    limit: int | None = Field(100, ge=1, description="Examples per benchmark (fixed seeded subset). None: all.")
    num_fewshot: int = Field(0, ge=0, description="Few-shot examples in each prompt.")
    max_gen_toks: int | None = Field(
        None,
        ge=1,
        description="Cap on generated tokens for generation tasks (cmrc2018, gsm8k, lm-eval's). None: the task's own.",
    )


# A method is "base" (the untrained model) or a stage name (its output model).
MethodName = str

# The run's own test split: an extra test may not take its name (the report would show two "test" tables).
RUN_TEST_NAME = "test"


class ExtraTestConfig(Section):
    """An extra test set every method is evaluated on after the run's own test split: an out-of-domain
    view of the task (NTREX-128 news beside a canon-trained run). It is read as `data.sources` are
    (same loaders, Tibetan normaliser and data directory), never split, and rows whose source or
    reference is in the run's training splits are dropped (counted) so that none of it was trained on.
    The rows evaluated are kept in RUN_DIR/splits/extra/<name>/."""

    name: str = Field(description="The test set's name (its report table and folder), e.g. 'ntrex'.")
    source: SourceConfig = Field(
        description="Where its examples come from: a source section as in data.sources, e.g. {kind: ntrex}."
    )
    limit: int | None = Field(
        100,
        ge=1,
        description="Examples evaluated: a fixed seeded subset (in file order) of what is left after cleaning "
        "and the leakage rule. None: all.",
    )
    max_source_chars: int | None = Field(
        None,
        ge=1,
        description="Length cap on its source and reference, in characters; longer rows are dropped (counted). "
        "None: data.max_source_chars.",
    )

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        check_plain_name(v, "an extra test's name")  # it names the folder splits/extra/<name>
        if v == RUN_TEST_NAME:
            raise ValueError(f"{v!r} is the run's own test split; name the extra test after its data, e.g. 'ntrex'")
        return v


class JudgeConfig(Section):
    """The LLM-judge pairwise win rate (judge and prompt not published): a judge model compares two
    methods' outputs for the same source, each pair asked in both orders (see semrl.eval.judge)."""

    enabled: bool = Field(
        False, description="Run the judge after evaluation (`semrl judge RUN_DIR` runs it on demand)."
    )
    model: str | None = Field(
        None,
        description="Local judge: 'tiny', 'gemma-3-270m', a hub id or a local path. With `url`: the model name "
        "the server serves.",
    )
    url: str | None = Field(
        None,
        description="An OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 (asked through the openai client at URL/chat/completions).",
    )
    api_key_env: str | None = Field(
        None, description="Name of the environment variable holding the endpoint's API key (sent as a Bearer token)."
    )
    mode: Literal["auto", "logprob", "generate"] = Field(
        "auto",
        description="Local judge: 'logprob' compares the log-probabilities of the labels A / B / tie after the "
        "prompt; 'generate' generates a reply and parses it; 'auto': logprob for a base model, generate for "
        "a model with a chat template. Endpoints always generate.",
    )
    pairs: list[tuple[MethodName, MethodName]] = Field(
        default_factory=lambda: [("grpo", "sft"), ("grpo", "cold_start")],
        description="Method pairs to compare; rates are from the first method's side (win = it was preferred).",
    )
    limit: int | None = Field(None, ge=1, description="Judge the first N test examples (None: all evaluated).")
    template: str | None = Field(
        None,
        description="Judge prompt with {output_a}, {output_b} and optionally {source}, {reference}, "
        "{source_lang_name}, {target_lang_name}; it must ask for one of A, B, tie. None: semrl's default "
        "for the task (meaning preservation and fluency in the target language).",
    )
    max_tokens: int = Field(16, ge=1, description="Tokens a generating judge may produce for its verdict.")
    batch_size: int = Field(8, ge=1, description="Prompts per forward pass of a local judge.")
    timeout_s: float = Field(120.0, gt=0, description="Seconds to wait for one endpoint reply.")
    max_retries: int = Field(
        2, ge=0, description="Endpoint: retries of a failed request (connection error, 429, 5xx), with backoff."
    )
    concurrency: int = Field(8, ge=1, description="Endpoint: requests in flight at once.")

    _omit_when_default = ("max_retries", "concurrency")

    @field_validator("pairs")
    @classmethod
    def _distinct_pairs(cls, v: list[tuple[str, str]]) -> list[tuple[str, str]]:
        for a, b in v:
            if a == b:
                raise ValueError(f"a judge pair compares two different methods; got [{a}, {b}]")
        return v

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError(
                f"an endpoint URL starts with http:// or https://, e.g. http://localhost:8000/v1; got {v!r}"
            )
        return v

    @model_validator(mode="after")
    def _judge_is_named(self) -> JudgeConfig:
        if self.enabled and not self.model:
            raise ValueError(
                "the judge is enabled but evaluation.judge.model is not set: name a local model ('tiny', "
                "'gemma-3-270m', a hub id or a path) or, with evaluation.judge.url, the model the server serves"
            )
        if self.url and self.mode == "logprob":
            raise ValueError(
                "evaluation.judge.mode 'logprob' needs a local model; an endpoint judge generates (mode: auto)"
            )
        return self


class EvaluationConfig(Section):
    """What is measured after training: task quality on the test split, the alignment tax, drift, the judge."""

    methods: list[MethodName] | None = Field(
        None, description="Methods to evaluate: 'base' and stage names (null: base and every enabled stage)."
    )
    test_limit: int | None = Field(None, ge=1, description="Evaluate on the first N test examples (None: all).")
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    second_encoder: EncoderConfig | None = Field(
        None, description="An encoder that was not the reward, so similarity is not only the thing optimised."
    )
    benchmarks: list[BenchmarkConfig] = Field(
        default_factory=lambda: [
            BenchmarkConfig(name="cmrc2018"),
            BenchmarkConfig(name="mmlu"),
            BenchmarkConfig(name="gsm8k"),
        ],
        description="The general benchmarks the alignment tax is measured on.",
    )
    dtype: Literal["float32", "model"] = Field(
        "float32",
        description="Weight dtype of the evaluated models: 'float32', because the tax measures and drift are "
        "differences of hundredths of a nat that bfloat16 rounding (3 significant digits) can swamp, or 'model' "
        "(what model.dtype chose for training; 1.7x faster on a CPU with AVX512-BF16, but in the demo it changed "
        "11-43% of the greedy outputs and strong SFT's chrF gain over its cold start from +0.52 [+0.14, +0.97] "
        "to +0.21 [-0.21, +0.62]).",
    )
    packed_weights: bool = Field(
        True,
        description="On CPU, multiply by copies of the evaluated models' linear weights packed once for oneDNN "
        "(`semrl.models.pack_linear_weights`): float32 products 1.1-3.7x faster, the same float32 values summed in "
        "another order (about 1e-6 apart; the demo's evaluation 1.40x faster, every output the same). The copies "
        "cost the linear weights' memory once more per loaded model (base and evaluated model: about 2 GiB for "
        "Gemma 3 270M in float32). False: torch's plain CPU matmuls.",
    )
    benchmark_batch_size: int = Field(
        8,
        ge=1,
        description="Batch size of the general benchmarks' log-likelihoods, the task KL and the continuous tax scores "
        "(their generated answers go in batches of `generation.batch_size`). Log-likelihoods hold batch x answer "
        "tokens x vocabulary logits (only the answer's positions are computed); long contexts of different "
        "lengths (CMRC 2018's passages) are padded to the batch's longest.",
    )
    drift_examples: int = Field(100, ge=1, description="General texts for NLL/KL drift (CMRC contexts by default).")
    drift_text_file: str | None = Field(
        None, description="A text file (one passage per line) for drift instead of CMRC."
    )
    bootstrap_samples: int = Field(1000, ge=100, description="Bootstrap resamples of every interval.")
    confidence: float = Field(0.95, gt=0.5, lt=1.0, description="Confidence level of every interval.")
    tax_meter_steps: int = Field(0, ge=0, description="Measure NLL drift every N training steps (0: off).")
    primary_tax: Literal["continuous", "accuracy", "drift", "task_kl"] = Field(
        "continuous",
        description="The tax measure the verdict rests on: 'continuous' (the mean per-item continuous tax over the "
        "benchmarks: gold-choice probability, gold-answer log-likelihood), 'accuracy' (their accuracy-style scores), "
        "'drift' (NLL increase on general text) or 'task_kl' (forward KL from the base model on the task's own "
        "distribution). The others are reported as supporting evidence.",
    )
    task_kl_examples: int = Field(
        32,
        ge=0,
        description="Dev prompts sampled from the base model once per run for the task-distribution KL (0: off).",
    )
    judge: JudgeConfig = Field(default_factory=JudgeConfig, description="LLM-judge pairwise win rate (off by default).")
    extra_tests: list[ExtraTestConfig] = Field(
        default_factory=list,
        description="Further test sets every method is evaluated on with the same decoding and encoders, each "
        "its own task table in the report (e.g. [{name: ntrex, source: {kind: ntrex}}] beside a canon-trained "
        "run: the out-of-domain view of the tax).",
    )

    _omit_when_default = ("extra_tests", "packed_weights")

    @field_validator("extra_tests")
    @classmethod
    def _unique_names(cls, v: list[ExtraTestConfig]) -> list[ExtraTestConfig]:
        names = [t.name for t in v]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"each extra test needs its own name; {twice} appear more than once")
        return v
