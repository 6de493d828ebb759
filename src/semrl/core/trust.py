"""Which Python modules a config may make semrl import code from (custom rewards by dotted path).

A config is data, but a dotted path in it is code: importing the module runs it, and calling what
it names runs that. So semrl imports only from modules the user lists as trusted, and never from
the standard library (subprocess, os, builtins...) or from well-known packages that are not reward
code, whatever the list says: a config written by someone else could list those too.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

# Third-party packages that hold no reward code but do hold callables that run commands, load
# pickles or remote code, or write files: never imported from a config. semrl's own rewards are
# built-ins, named directly. The exceptions are reward modules inside such a package.
NEVER_TRUSTED: tuple[str, ...] = (
    "semrl",
    "pip",
    "setuptools",
    "pkg_resources",
    "_distutils_hack",
    "IPython",
    "ipykernel",
    "pytest",
    "_pytest",
    "torch",
    "transformers",
    "trl",
    "accelerate",
    "deepspeed",
    "datasets",
    "huggingface_hub",
    "sentence_transformers",
    "lm_eval",
    "numpy",
    "scipy",
    "pandas",
    "sympy",
    "yaml",
    "jinja2",
    "fsspec",
    "dill",
    "cloudpickle",
    "joblib",
    "psutil",
    "requests",
    "httpx",
    "urllib3",
    "openai",
)
TRUSTABLE_EXCEPTIONS: tuple[str, ...] = ("trl.rewards",)  # TRL's own reward functions


def is_under(module: str, prefix: str) -> bool:
    """Whether dotted `module` is `prefix` or a submodule of it ('a.b' is under 'a', 'ab' is not)."""
    return module == prefix or module.startswith(prefix + ".")


def never_trusted_reason(module: str) -> str | None:
    """Why `module` may never be imported from a config (None when it may, once trusted)."""
    top = module.split(".")[0]
    if top in sys.stdlib_module_names or top in sys.builtin_module_names or top == "__main__":
        return f"{module!r} is part of Python's standard library"
    if any(is_under(module, ok) for ok in TRUSTABLE_EXCEPTIONS):
        return None
    if any(is_under(module, bad) for bad in NEVER_TRUSTED):
        return f"{module!r} belongs to {top!r}, a package that holds no reward code"
    return None


def is_module_name(name: str) -> bool:
    """Whether `name` is a dotted Python module name ('pkg.sub'): identifiers joined by dots."""
    return bool(name) and all(part.isidentifier() for part in name.split("."))


def untrusted_reason(module: str, trusted: Sequence[str]) -> str | None:
    """Why code from `module` may not be imported given the `trusted` prefixes (None when it may)."""
    reason = never_trusted_reason(module)
    if reason is not None:
        return reason
    if not any(is_under(module, prefix) for prefix in trusted):
        listed = ", ".join(trusted) if trusted else "none"
        return f"module {module!r} is not trusted (trusted modules: {listed})"
    return None
