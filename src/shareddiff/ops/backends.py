"""One rule for attention backend names, for both ops: a name the op cannot run is refused with a
``ValueError`` naming the field, the value and the names allowed there; there is no silent fallback
(as transformers' attention interface refuses an ``attn_implementation`` it does not have).

``differential_attention`` (DIFF, Shared DIFF) takes the names of its registry (``available_backends``:
"auto", "eager", "sdpa", and "triton" where Triton imports); ``softmax_attention`` (Transformer,
DIFF V2, Shared DIFF V2) takes ``SOFTMAX_BACKENDS``.
"""

from __future__ import annotations

from shareddiff.ops.differential import available_backends

SOFTMAX_BACKENDS = ("auto", "eager", "sdpa")  # "auto" is SDPA: the fused differential kernel has no softmax twin


def softmax_backends() -> list[str]:
    """The backend names ``softmax_attention`` runs: "auto" (= "sdpa"), "eager", "sdpa"."""
    return list(SOFTMAX_BACKENDS)


def check_backend(backend: str, allowed: list[str], field: str, user: str) -> None:
    """Raise ``ValueError`` unless ``backend`` is one of ``allowed``: "unknown attention backend" for a name
    no op has, "not supported by ``user``" for a name of the other op. ``field`` names where the value came
    from (``train.attn_backend``, ``backend``)."""
    if backend in allowed:
        return
    if backend in {*available_backends(), *SOFTMAX_BACKENDS}:
        raise ValueError(
            f"{field}={backend!r}: attention backend {backend!r} is not supported by {user}; use one of {allowed}"
        )
    raise ValueError(f"unknown attention backend {backend!r} ({field}); use one of {allowed}")
