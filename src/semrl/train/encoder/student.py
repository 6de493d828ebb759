"""The student sentence encoder: a transformers body, a static embedding or a sentence-transformers model."""

from __future__ import annotations

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
    """The input embedding matrix of the model at `path` (float32, detached), reduced to its
    first `dim` principal components when `dim` is smaller than its width (a smaller static
    student trains faster: the optimizer updates every row each step)."""
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(path, dtype=torch.float32)
    weights = model.get_input_embeddings().weight.detach().clone()
    del model
    if dim is not None and dim < weights.shape[1]:
        centred = weights - weights.mean(dim=0, keepdim=True)
        _, _, v = torch.pca_lowrank(centred, q=dim, center=False, niter=4)
        weights = centred @ v[:, :dim]
    return weights.contiguous()
