"""GRPO rewards as plain TRL-style callables: semantic similarity, language consistency, BLEU/chrF, reward-hacking guards, the tau floor, and a registry that builds them from the config."""

from semrl.rewards.base import (
    RewardFunc,
    RewardFunction,
    check_lang,
    column_values,
    completion_text,
)
from semrl.rewards.grounded import SourceGroundedReward
from semrl.rewards.guards import (
    GUARD_NGRAM,
    REPETITION_THRESHOLD,
    SOURCE_COPY_THRESHOLD,
    LanguageGate,
    LengthPenalty,
    RepetitionPenalty,
    SourceCopyPenalty,
    check_mode,
    is_repetitive,
    is_source_copy,
)
from semrl.rewards.language import LanguageReward
from semrl.rewards.overlap import BleuReward, ChrfReward
from semrl.rewards.registry import (
    REQUIRED_COMPLETION_KEYS,
    build_reward_functions,
    load_completions,
    score_completions,
)
from semrl.rewards.semantic import SemanticReward, check_tau, rescale_similarity
from semrl.rewards.tau import (
    TauCalibration,
    calibrate_tau_shuffled,
    resolve_tau,
    shuffled_pair_similarities,
)

__all__ = [
    "RewardFunc",
    "completion_text",
    "RewardFunction",
    "column_values",
    "check_lang",
    "rescale_similarity",
    "check_tau",
    "SemanticReward",
    "LanguageReward",
    "BleuReward",
    "ChrfReward",
    "REPETITION_THRESHOLD",
    "SOURCE_COPY_THRESHOLD",
    "GUARD_NGRAM",
    "is_repetitive",
    "is_source_copy",
    "check_mode",
    "LanguageGate",
    "LengthPenalty",
    "RepetitionPenalty",
    "SourceCopyPenalty",
    "SourceGroundedReward",
    "TauCalibration",
    "shuffled_pair_similarities",
    "calibrate_tau_shuffled",
    "resolve_tau",
    "build_reward_functions",
    "score_completions",
    "REQUIRED_COMPLETION_KEYS",
    "load_completions",
]
