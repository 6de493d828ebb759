"""The `task` and `data` sections: the language pair and task kind, the data sources, the split sizes."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from semrl.config.base import Section
from semrl.config.rewards import EncoderConfig


class TaskConfig(Section):
    """The task (translation or headline generation), its languages and its prompt."""

    kind: Literal["translation", "headline"] = Field(
        "translation",
        description="'translation' (source -> target language) or 'headline' (article -> headline, one language).",
    )
    source_lang: str = Field("bo", description="ISO 639-1 code of the source text, e.g. 'bo', 'zh', 'en'.")
    target_lang: str = Field("zh", description="ISO 639-1 code of the output text.")
    prompt_template: str | None = Field(
        None,
        description="Completion-style prompt with {source}, {source_lang_name}, {target_lang_name}. "
        "None: semrl's default for the task and language pair.",
    )
    use_chat_template: Literal["auto", "always", "never"] = Field(
        "auto", description="'auto': the tokenizer's chat template when it has one, completion-style otherwise."
    )

    @model_validator(mode="after")
    def _headline_is_monolingual(self) -> TaskConfig:
        if self.kind == "headline" and self.source_lang != self.target_lang:
            raise ValueError(
                f"task.kind 'headline' writes a headline in the article's language, so source_lang "
                f"({self.source_lang!r}) and target_lang ({self.target_lang!r}) must be equal"
            )
        return self


class LocalSource(Section):
    """A local JSONL, CSV or TSV file; `columns` maps semrl's fields to the file's columns."""

    kind: Literal["local"] = Field("local", description="Selects this source type.")
    path: str = Field(description="The file (relative to the working directory).")
    format: Literal["auto", "jsonl", "csv", "tsv"] = Field("auto", description="'auto': from the file's suffix.")
    columns: dict[str, str] = Field(
        default_factory=lambda: {"source": "source", "reference": "reference"},
        description="Map of semrl field (source, reference, doc_id, id) to the file's column name.",
    )


class HubSource(Section):
    """A Hugging Face hub dataset by id (needs internet or a populated HF cache)."""

    kind: Literal["hub"] = Field("hub", description="Selects this source type.")
    id: str = Field(description="The dataset's hub id, e.g. 'KEVVVV/CMHG'.")
    config_name: str | None = Field(None, description="The dataset's configuration (subset), if it has several.")
    split: str = Field("train", description="The dataset split to read; semrl draws its own splits from it.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    data_files: str | list[str] | None = Field(
        None,
        description="Files of the dataset repository to read, e.g. 'bo/bo-all.csv' for the Tibetan part of "
        "KEVVVV/CMHG (null: the dataset's default files).",
    )
    columns: dict[str, str] = Field(
        default_factory=lambda: {"source": "source", "reference": "reference"},
        description="Map of semrl field (source, reference, doc_id, id) to the dataset's column name.",
    )

    _omit_when_default = ("data_files",)


class NtrexSource(Section):
    """NTREX-128 news (line-aligned, 123 documents). Read from the data directory, else downloaded."""

    kind: Literal["ntrex"] = Field("ntrex", description="Selects this source type.")
    headlines: bool = Field(False, description="Yield (document body -> headline) pairs instead of sentence pairs.")
    lead_lines: int | None = Field(
        None,
        ge=1,
        description="With headlines: the article is its first N body lines (its lead); null: the whole body "
        "(median about 2,300 characters in Tibetan).",
    )

    _omit_when_default = ("lead_lines",)

    @model_validator(mode="after")
    def _lead_needs_headlines(self) -> NtrexSource:
        if self.lead_lines is not None and not self.headlines:
            raise ValueError("lead_lines applies to headline pairs only (headlines: true)")
        return self


class LotsawaSource(Section):
    """Lotsawa House Tibetan-Chinese text pairs (OpenPecha C0A2DD042). Buddhist liturgy."""

    kind: Literal["lotsawa"] = Field("lotsawa", description="Selects this source type.")
    skip_titles: bool = Field(True, description="Drop line 1 of each text (usually its title).")


class MitraSource(Section):
    """MITRA-parallel Tibetan -> Buddhist Chinese (dharmamitra/mitra-parallel at a pinned commit):
    one TSV per (Tibetan text, Taisho text) pair; a document is a Tibetan text."""

    kind: Literal["mitra"] = "mitra"
    collection: Literal["subset", "upstream"] = Field(
        "subset",
        description="'subset': the files the data directory's mitra_bo_zh/FILES.txt lists (else its tsv/ folder's; "
        "the shared copy: 588 files of 94 Kangyur texts, about 120k rows); a listed file missing from tsv/ is "
        "downloaded. 'upstream': every Tibetan->Chinese file of the pinned commit "
        "(5,889 files, 852 Tibetan texts, about 826k rows), listed with GitHub's API (needs the network once).",
    )
    texts: str | list[str] | None = Field(
        None,
        description="Keep the Tibetan texts whose id (file name before the Taisho part, e.g. "
        "'K01D0001-2_H0001-2') matches a glob ('K01D*'), or a regular expression written 're:<pattern>' "
        "(whole id); a list keeps texts matching any. null: every text of the collection.",
    )

    _omit_when_default = ("collection", "texts")

    @field_validator("texts")
    @classmethod
    def _patterns_compile(cls, v: str | list[str] | None) -> str | list[str] | None:
        import re

        patterns = [v] if isinstance(v, str) else (v or [])
        if isinstance(v, list) and not v:
            raise ValueError("an empty list selects no text; leave texts out (null) for every text")
        for p in patterns:
            if not p.strip():
                raise ValueError("a text pattern is empty")
            if p.startswith("re:"):
                try:
                    re.compile(p[3:])
                except re.error as err:
                    raise ValueError(f"{p!r} is not a regular expression ({err})") from None
        return v


SourceConfig = Annotated[
    Union[LocalSource, HubSource, NtrexSource, LotsawaSource, MitraSource], Field(discriminator="kind")
]


SplitSize = Union[int, float]


class SplitSizes(Section):
    """Split sizes: an int is a number of examples (filled by whole documents), a float in (0, 1)
    a fraction of all examples, and -1 'whatever is left'. Splits are drawn by document."""

    cold_start: SplitSize = Field(200, description="Cold-start SFT examples (paper: 5k of 100k).")
    rl: SplitSize = Field(-1, description="GRPO prompts (paper: the rest of the training data).")
    dev: SplitSize = Field(100, description="Dev examples (tau calibration, model selection).")
    test: SplitSize = Field(300, description="Test examples (task-quality evaluation).")

    @field_validator("cold_start", "rl", "dev", "test")
    @classmethod
    def _valid_size(cls, v: SplitSize) -> SplitSize:
        if isinstance(v, float) and not (0.0 < v < 1.0):
            raise ValueError(f"a fractional split size must lie in (0, 1), got {v}")
        if isinstance(v, int) and v < -1:
            raise ValueError(f"a split size must be a count >= 0, a fraction, or -1 for the rest; got {v}")
        return v

    @model_validator(mode="after")
    def _one_rest(self) -> SplitSizes:
        rest = [k for k in ("cold_start", "rl", "dev", "test") if getattr(self, k) == -1]
        if len(rest) > 1:
            raise ValueError(f"only one split may be -1 ('the rest'); got {rest}")
        return self


# The length cap when data.max_source_chars is null: far above any sentence or paragraph.
DEFAULT_MAX_TEXT_CHARS = 16384


class AlignmentFilter(Section):
    """Drop training pairs that look misaligned (automatic alignments, as MITRA's, are noisy). It
    cleans the training splits only, after test and dev are drawn, so test and dev do not change
    with it. Every rule is off by default; what each removes is counted in the splits manifest."""

    min_length_ratio: float | None = Field(
        None,
        gt=0,
        description="Drop pairs whose source has fewer characters per reference character (spaces not counted). "
        "MITRA Tibetan->Chinese: median about 4.8 after cleaning.",
    )
    max_length_ratio: float | None = Field(None, gt=0, description="Drop pairs above this source/reference ratio.")
    min_cosine: float | None = Field(
        None,
        ge=-1.0,
        le=1.0,
        description="Drop pairs whose source and reference embed further apart than this cosine (the encoder "
        "must read both languages).",
    )
    encoder: EncoderConfig | None = Field(
        None, description="The encoder for min_cosine (null: rewards.encoder). Backend 'trained' is refused."
    )

    _omit_when_default = ("encoder",)

    @model_validator(mode="after")
    def _consistent(self) -> AlignmentFilter:
        lo, hi = self.min_length_ratio, self.max_length_ratio
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"min_length_ratio ({lo}) is above max_length_ratio ({hi})")
        if self.encoder is not None and self.min_cosine is None:
            raise ValueError("encoder is only read by min_cosine; set min_cosine or drop encoder")
        if self.encoder is not None and self.encoder.backend == "trained":
            raise ValueError(
                "backend 'trained' is the encoder a run trains on its own splits, which do not exist before the "
                "data is filtered; name a sentence-transformers encoder that reads both languages"
            )
        return self

    @property
    def active(self) -> bool:
        """Whether any rule is set."""
        return any(v is not None for v in (self.min_length_ratio, self.max_length_ratio, self.min_cosine))


class DataConfig(Section):
    """Where the examples come from, and how they are split (by document, so no document is in two splits)."""

    sources: list[SourceConfig] = Field(
        default_factory=lambda: [NtrexSource()],
        description="Where the examples come from: one or more sources, each chosen by its `kind`.",
    )
    splits: SplitSizes = Field(default_factory=SplitSizes)
    max_source_chars: int | None = Field(
        None,
        ge=1,
        description="Length cap, in characters, on an example's source and reference (None: "
        "DEFAULT_MAX_TEXT_CHARS, 16384; a 1 MB line would exhaust memory at evaluation).",
    )
    too_long: Literal["drop", "fail"] = Field(
        "drop",
        description="An example over max_source_chars: 'drop' it (counted in the split table and the splits "
        "manifest) or 'fail' naming it.",
    )
    filter: AlignmentFilter = Field(default_factory=AlignmentFilter, description="Alignment filter (off by default).")
    training_unit: Literal["document", "example"] = Field(
        "document",
        description="How cold_start and rl are filled from the documents test and dev left: 'document' (whole "
        "documents, as test and dev) or 'example' (rows in a seeded random order, so that a count is met "
        "exactly even when documents hold thousands of rows; the training splits may then share documents, "
        "never with test or dev). A smaller cold_start is then a subset of a larger one.",
    )

    eval_document_max_examples: int | None = Field(
        None,
        ge=1,
        description="test and dev take only documents of at most this many examples (null: any size); larger "
        "ones stay for training. Keeps a test split of whole documents near its size when some documents run to "
        "thousands of rows (MITRA's Tibetan texts: 4 to 13,844).",
    )

    _omit_when_default = ("too_long", "filter", "training_unit", "eval_document_max_examples")
