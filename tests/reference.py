"""Independent float64 re-implementations written from the architecture page, not from project code."""

import math

import torch


def rope_complex(x: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate (N, d) by position with interleaved pairs (x[2j], x[2j+1]) read as complex numbers."""
    n, d = x.shape
    freqs = torch.tensor([theta ** (-2 * j / d) for j in range(d // 2)], dtype=torch.float64)
    angles = torch.arange(n, dtype=torch.float64)[:, None] * freqs[None, :]
    z = torch.view_as_complex(x.double().reshape(n, d // 2, 2).contiguous()) * torch.polar(
        torch.ones_like(angles), angles
    )
    return torch.view_as_real(z).reshape(n, d)


def depth_lambda_init(layer_idx: int) -> float:
    """λ_init(l) = 0.8 − 0.6·exp(−0.3·(l − 1)) with l = layer_idx + 1."""
    return 0.8 - 0.6 * math.exp(-0.3 * layer_idx)


def differential_heads(
    x, q1, q2, k1, k2, v, lam_vectors, lambda_init, norm_weight, w_o, *, theta, head_norm=True, eps=1e-5
):
    """Architecture §3 after the projections, one sequence, float64, explicit loop over heads.

    q1[i], q2[i], k1[i], k2[i]: (N, d) per head (before RoPE); v[i]: (N, 2d); w_o: (D, D) in X·W form.
    """
    lq1, lk1, lq2, lk2 = (t.double() for t in lam_vectors)
    lam = math.exp(float(lq1 @ lk1)) - math.exp(float(lq2 @ lk2)) + lambda_init
    n, d = q1[0].shape
    mask = torch.full((n, n), float("-inf"), dtype=torch.float64).triu(1)
    heads = []
    for i in range(len(q1)):
        a1 = torch.softmax(rope_complex(q1[i], theta) @ rope_complex(k1[i], theta).T / math.sqrt(d) + mask, -1)
        a2 = torch.softmax(rope_complex(q2[i], theta) @ rope_complex(k2[i], theta).T / math.sqrt(d) + mask, -1)
        o = (a1 - lam * a2) @ v[i].double()
        if head_norm:
            o = o / torch.sqrt((o * o).mean(-1, keepdim=True) + eps)
            if norm_weight is not None:
                o = o * norm_weight.double()
            o = o * (1 - lambda_init)
        heads.append(o)
    return torch.cat(heads, dim=-1) @ w_o.double()


def causal_softmax_head(q, k, v, theta: float) -> torch.Tensor:
    """softmax(RoPE(q) RoPE(k)ᵀ/√d + causal mask) v for one head of one sequence, float64; q, k, v: (N, d)."""
    n, d = q.shape
    mask = torch.full((n, n), float("-inf"), dtype=torch.float64).triu(1)
    scores = rope_complex(q, theta) @ rope_complex(k, theta).T / math.sqrt(d) + mask
    return torch.softmax(scores, -1) @ v.double()


def diff_v2_heads(x, q, k, v, w_lambda, w_o, *, theta):
    """DIFF V2 after the projections (unilm Diff-Transformer-V2 README), one sequence, float64, a loop over heads.

    q: 2h query heads (N, d), head pair i = (2i, 2i+1); k, v: h_kv heads (N, d); query head j reads
    key/value head j // (2h / h_kv) (GQA groups of consecutive heads). λ_i = sigmoid(x W_λ)[:, i] per
    token; out_i = O_2i − λ_i·O_2i+1; w_lambda: (D, h) and w_o: (h·d, D) in X·W form.
    """
    h, group = len(q) // 2, len(q) // len(k)
    lam = torch.sigmoid(x.double() @ w_lambda.double())  # (N, h)
    o = [causal_softmax_head(q[j], k[j // group], v[j // group], theta) for j in range(2 * h)]
    heads = [o[2 * i] - lam[:, i : i + 1] * o[2 * i + 1] for i in range(h)]
    return torch.cat(heads, dim=-1) @ w_o.double()


def rms_norm(x, weight, eps: float) -> torch.Tensor:
    """x / sqrt(mean(x²) + eps) · weight over the last dim, float64; ``weight`` None: no scale."""
    x = x.double()
    out = x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)
    return out if weight is None else out * weight.double()


def swiglu(x, w_gate, w_up, w_down) -> torch.Tensor:
    """(silu(x W_g) ⊙ x W_1) W_2 in float64, with weights in X·W form; silu(z) = z / (1 + e^−z)."""
    gate = x.double() @ w_gate.double()
    return (gate / (1 + torch.exp(-gate)) * (x.double() @ w_up.double())) @ w_down.double()
