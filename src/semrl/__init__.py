"""semrl: teach a large language model a low-resource language with semantic-reward GRPO,
and measure what it costs in general competence (the alignment tax)."""

__version__ = "0.1.0"
