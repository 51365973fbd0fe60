"""The floating dtypes a test can run over, by name (torch-free, pure).

Names are torch's (``float16``, ``bfloat16``, ``float32``, ``float64``) and the
short forms ``fp16``, ``bf16``, ``fp32``, ``fp64``; each maps to torch's name,
which is also the test-id part (``test_x[cpu-bfloat16]``).
"""

from __future__ import annotations

__all__ = ["DEFAULT_DTYPE", "DTYPE_NAMES", "DtypeError", "parse_dtype", "to_torch"]

DEFAULT_DTYPE = "float32"
DTYPE_NAMES: dict[str, str] = {
    "float16": "float16",
    "half": "float16",
    "fp16": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float32": "float32",
    "float": "float32",
    "fp32": "float32",
    "float64": "float64",
    "double": "float64",
    "fp64": "float64",
}
_SHOWN = "float16 (fp16), bfloat16 (bf16), float32 (fp32), float64 (fp64)"


class DtypeError(ValueError):
    """A dtype name that is not one of the floating dtypes a test can run over."""


def parse_dtype(text: object) -> str:
    """torch's name for ``text`` (``"bf16"`` -> ``"bfloat16"``); a ``torch.dtype`` is taken
    by its name too. Raises :class:`DtypeError` for anything else, integer and complex
    dtypes included."""
    name = str(text).removeprefix("torch.") if not isinstance(text, str) else text
    key = name.strip().lower().removeprefix("torch.")
    if key in DTYPE_NAMES:
        return DTYPE_NAMES[key]
    shown = repr(text) if len(repr(text)) <= 60 else repr(text)[:57] + "..."
    raise DtypeError(f"unknown or non-floating dtype {shown}; known: {_SHOWN}")


def to_torch(name: str) -> object:
    """The ``torch.dtype`` of a name :func:`parse_dtype` returned (imports torch)."""
    import torch

    return getattr(torch, name)
