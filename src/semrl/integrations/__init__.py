"""semrl inside other training engines: a semrl config's rewards built once for scoring rows
(`scoring`, engine-neutral) and verl's reward manager and `compute_score` (`verl`, needs verl)."""

from semrl.integrations.scoring import BATCH_DEPENDENT, ConfiguredRewards, configured_rewards

__all__ = ["BATCH_DEPENDENT", "ConfiguredRewards", "configured_rewards"]
