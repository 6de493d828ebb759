"""The `task` and `data` sections: the language pair and task kind, the data sources, the split sizes."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from semrl.config.base import Section


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


SourceConfig = Annotated[Union[LocalSource, HubSource, NtrexSource, LotsawaSource], Field(discriminator="kind")]


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

    _omit_when_default = ("too_long",)
