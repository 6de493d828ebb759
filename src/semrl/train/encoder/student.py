"""The student sentence encoder: a transformers body, a static embedding or a sentence-transformers model."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from semrl.config.encoder import StudentConfig
from semrl.core.errors import ModelError
from semrl.encoders import SentenceTransformerEncoder


def _resolve(name: str) -> str:
    from semrl.models import resolve_model

    return str(resolve_model(name))


def _freeze_lower_layers(transformer: Any, trainable: int) -> None:
    """Train only the last `trainable` layers of a transformers body (its layer list is the
    ModuleList as long as config.num_hidden_layers), and its final norm."""
    import torch

    body = transformer.auto_model
    n_layers = getattr(body.config, "num_hidden_layers", None)
    layers = next(
        (m for m in body.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == n_layers),
        None,
    )
    if layers is None:
        raise ModelError(
            f"encoder.student.trainable_layers: cannot find the layer list of {type(body).__name__}; set it to null"
        )
    body.requires_grad_(False)
    for layer in list(layers)[len(layers) - trainable :] if trainable else []:
        layer.requires_grad_(True)
    norm = getattr(body, "norm", None)
    if trainable and norm is not None:
        norm.requires_grad_(True)


def build_student(student: StudentConfig, out_dim: int | None = None, seed: int = 0) -> Any:
    """The student SentenceTransformer; a Dense layer maps it to `out_dim` when its width differs."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Pooling, StaticEmbedding, Transformer

    torch.manual_seed(seed)
    if student.kind == "sentence-transformers":
        model = SentenceTransformerEncoder(student.name, device="cpu").model
        model.requires_grad_(True)
        model.max_seq_length = student.max_seq_length
        modules = list(model)
    elif student.kind == "transformer":
        body = Transformer(_resolve(student.name), max_seq_length=student.max_seq_length)
        if student.trainable_layers is not None:
            _freeze_lower_layers(body, student.trainable_layers)
        modules = [body, Pooling(body.get_embedding_dimension(), "mean")]
    else:
        from transformers import AutoTokenizer

        path = _resolve(student.name)
        tokenizer = AutoTokenizer.from_pretrained(path)
        if not getattr(tokenizer, "is_fast", False):
            raise ModelError(f"encoder.student: a static student needs a fast tokenizer; {path} has none")
        if student.init == "model":
            weights = _input_embeddings(path, student.embedding_dim)
            static = StaticEmbedding(tokenizer, embedding_weights=weights)
        else:
            static = StaticEmbedding(tokenizer, embedding_dim=student.embedding_dim)
        modules = [static]
    width = modules[-1].get_embedding_dimension() if hasattr(modules[-1], "get_embedding_dimension") else None
    if width is None:
        width = SentenceTransformer(modules=modules, device="cpu").get_embedding_dimension()
    if out_dim is not None and width != out_dim:
        modules.append(Dense(width, out_dim, activation_function=torch.nn.Identity()))
    return SentenceTransformer(modules=modules, device="cpu")


def _input_embeddings(path: str, dim: int | None = None) -> Any:
    """The input embedding matrix of the model at `path` (float32, detached), projected on its
    first `dim` principal components when `dim` is smaller than its width (a narrower static
    student trains faster)."""
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(path, dtype=torch.float32)
    weights = model.get_input_embeddings().weight.detach().clone()
    del model
    if dim is not None and dim < weights.shape[1]:
        centred = weights - weights.mean(dim=0, keepdim=True)
        # The exact components, from the width x width covariance: 2.4 s for Gemma's 262k x 640
        # table on 2 cores, where torch.pca_lowrank's randomized approximation took 34 s.
        _, vectors = torch.linalg.eigh((centred.T @ centred).double())
        weights = centred @ vectors[:, -dim:].flip(1).to(centred.dtype)
    return weights.contiguous()


def _row_subset_embedding_bag(bag: Any, rows: Any) -> Any:
    """A module that computes `bag` (an `nn.EmbeddingBag`) but trains only the table rows in
    `rows`, a sorted tensor of token ids. Its state dict keeps the whole table under `weight`, as
    `StaticEmbedding` saves and loads it, so checkpoints stay standard sentence-transformers
    directories."""
    import torch
    import torch.nn.functional as F

    class RowSubsetEmbeddingBag(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mode = bag.mode
            self.num_embeddings, self.embedding_dim = bag.weight.shape
            self.register_buffer("weight", bag.weight.detach())  # the bag is replaced: no copy needed
            self.register_buffer("rows", rows, persistent=False)
            # a token outside `rows` maps to the extra last row: it never occurs in the training texts
            lookup = torch.full((self.num_embeddings,), len(rows), dtype=torch.long)
            lookup[rows] = torch.arange(len(rows))
            self.register_buffer("lookup", lookup, persistent=False)
            self.trained = torch.nn.Parameter(
                torch.cat([self.weight[rows], self.weight.new_zeros(1, self.embedding_dim)])
            )
            self.register_state_dict_pre_hook(lambda module, prefix, keep_vars: module.sync())
            self.register_load_state_dict_pre_hook(self._from_table)

        def forward(self, input_ids: torch.Tensor, offsets: torch.Tensor | None = None) -> torch.Tensor:
            return F.embedding_bag(self.lookup[input_ids], self.trained, offsets, mode=self.mode)

        def sync(self) -> None:
            """Write the trained rows back into the whole table."""
            with torch.no_grad():
                self.weight[self.rows] = self.trained[:-1].detach()

        def full_bag(self) -> torch.nn.EmbeddingBag:
            self.sync()
            return torch.nn.EmbeddingBag.from_pretrained(self.weight, freeze=False, mode=self.mode)

        @staticmethod
        def _from_table(module: Any, state_dict: dict, prefix: str, *args: Any) -> None:
            # a checkpoint written by a plain StaticEmbedding (or by sync) carries the table only
            if prefix + "weight" in state_dict and prefix + "trained" not in state_dict:
                table = state_dict[prefix + "weight"]
                state_dict[prefix + "trained"] = torch.cat([table[module.rows], table.new_zeros(1, table.shape[1])])

    return RowSubsetEmbeddingBag()


@contextmanager
def trained_rows_only(student: Any, texts: Iterable[str], weight_decay: float = 0.0) -> Iterator[None]:
    """Within the block, a static student's optimizer sees only the token rows that occur in
    `texts` (the training texts); on exit its table is whole again, with those rows trained.

    Why: the other rows get no gradient, so AdamW without weight decay leaves them exactly as they
    are, yet it reads and writes all of Gemma's 262k rows (and their moments) every step, and
    the backward writes a gradient for each. With weight decay, or any other student, nothing
    changes.
    """
    import torch
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding

    static = student[0] if len(student) else None
    if (
        weight_decay
        or not isinstance(static, StaticEmbedding)
        or not isinstance(static.embedding, torch.nn.EmbeddingBag)
    ):
        yield
        return
    ids: set[int] = set()
    for encoding in static.tokenizer.encode_batch(list(texts), add_special_tokens=False):
        ids.update(encoding.ids)
    rows = torch.tensor(sorted(ids), dtype=torch.long)
    subset = _row_subset_embedding_bag(static.embedding, rows)
    static.embedding = subset
    try:
        yield
    finally:
        static.embedding = subset.full_bag()
