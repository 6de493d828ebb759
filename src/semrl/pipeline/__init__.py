"""The whole flow: a run, a sweep (reward presets, GRPO seeds), a few-shot transfer. The only modules that know every stage."""
