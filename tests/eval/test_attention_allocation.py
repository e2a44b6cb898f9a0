"""Attention mass: three buckets on hand-built maps with known sums, and on real models where the
buckets must add up to the whole row (1 for softmax, 1 − λ per layer for A1 − λ·A2)."""

import pytest
import torch

from shareddiff import ModelConfig, build_model
from shareddiff.data import load_split
from shareddiff.data.needle import NeedleBuilder
from shareddiff.eval.attention_allocation import attention_eval, attention_mass, recording


def one_row(values: list[float]) -> torch.Tensor:
    """A (1, 6, 6) map whose row 5 holds ``values`` (one head)."""
    m = torch.zeros(1, 6, 6)
    m[0, 5] = torch.tensor(values)
    return m


def test_buckets_on_hand_built_maps():
    # query row 5; answer span [1, 3); context [0, 4); question [4, 6)
    softmax = one_row([0.1, 0.3, 0.2, 0.1, 0.2, 0.1])  # answer 0.5, noise 0.2, question 0.3
    a1 = one_row([0.1, 0.3, 0.2, 0.1, 0.2, 0.1])
    a2 = one_row([0.4, 0.0, 0.0, 0.4, 0.1, 0.1])
    # A1 − 0.5·A2 = [−0.1, 0.3, 0.2, −0.1, 0.15, 0.05]: sums 0.5 / −0.2 / 0.2 (total 1 − λ = 0.5), |.| sums to 0.9
    result = attention_mass([(softmax,), (a1, a2)], [None, 0.5], row=5, answer=(1, 3), context_end=4)
    assert result["answer"] == pytest.approx((0.5 + 0.5 / 0.9) / 2)
    assert result["noise"] == pytest.approx((0.2 - 0.2 / 0.9) / 2)
    assert result["question"] == pytest.approx((0.3 + 0.2 / 0.9) / 2)
    assert result["total"] == pytest.approx((1 + 0.5 / 0.9) / 2)
    soft, diff = result["layers"]
    assert soft["lambda"] is None and "a1" not in soft
    assert soft["net"] == pytest.approx({"answer": 0.5, "noise": 0.2, "question": 0.3})
    assert diff["lambda"] == 0.5
    assert diff["net"] == pytest.approx({"answer": 0.5, "noise": -0.2, "question": 0.2})
    assert diff["a1"] == pytest.approx({"answer": 0.5, "noise": 0.2, "question": 0.3})
    assert diff["a2"] == pytest.approx({"answer": 0.0, "noise": 0.8, "question": 0.2})


def test_v2_buckets_take_each_heads_lambda_at_the_row():
    """V2 (A_2i, A_2i+1, λ of each head and query): two heads with λ 0.5 and 0.25 at row 5 (other rows' λ must not
    enter): head 1 as the DIFF layer above, head 2 A1 − 0.25·A2; "lambda" is their mean, 0.375."""
    first = torch.cat([one_row([0.1, 0.3, 0.2, 0.1, 0.2, 0.1])] * 2)  # (2, 6, 6)
    second = torch.cat([one_row([0.4, 0.0, 0.0, 0.4, 0.1, 0.1])] * 2)
    lam = torch.full((2, 6), 0.9)
    lam[:, 5] = torch.tensor([0.5, 0.25])
    result = attention_mass([(first, second, lam)], [None], row=5, answer=(1, 3), context_end=4)
    (layer,) = result["layers"]
    assert layer["lambda"] == pytest.approx(0.375)
    # head 1: 0.5 / −0.2 / 0.2; head 2 (A1 − 0.25·A2 = [0, 0.3, 0.2, 0, 0.175, 0.075]): 0.5 / 0.0 / 0.25
    assert layer["net"] == pytest.approx({"answer": 0.5, "noise": -0.1, "question": 0.225})
    assert layer["a1"] == pytest.approx({"answer": 0.5, "noise": 0.2, "question": 0.3})
    assert sum(layer["net"].values()) == pytest.approx(1 - layer["lambda"])
    assert result["answer"] == pytest.approx((0.5 / 0.9 + 0.5 / 0.75) / 2)  # each head normalised by its |row|


@pytest.mark.parametrize(
    ("attention", "lambda_above_one", "dtype"),
    [
        ("standard", False, torch.float32),
        ("diff", False, torch.float32),
        ("shared_diff", False, torch.float32),
        ("diff", True, torch.float32),
        ("diff_v2", False, torch.float32),
        ("standard", False, torch.float64),
        ("shared_diff", True, torch.float64),
    ],
)
def test_three_buckets_sum_to_the_row(seed, tiny_tokenizer, tiny_data, attention, lambda_above_one, dtype):
    """A float64 model's maps stay float64 through the probe: the row sums hold to 1e-12 instead of 1e-5."""
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    model = build_model(
        ModelConfig(attention=attention, n_heads=4 if attention == "standard" else 2, vocab_size=300, max_seq_len=256),
        dtype=dtype,
    ).eval()
    if lambda_above_one:  # λ = exp(λ_q1·λ_k1) − exp(λ_q2·λ_k2) + λ_init with λ_q1·λ_k1 = 16·0.09
        for block in model.layers:
            for name in ("lambda_q1", "lambda_k1"):
                getattr(block.attention, name).data.fill_(0.3)
            for name in ("lambda_q2", "lambda_k2"):
                getattr(block.attention, name).data.zero_()
    scalar_lambda = attention in ("diff", "shared_diff")  # DIFF V2's λ depends on the token: none per layer
    lambdas = [float(b.attention.lam().detach()) for b in model.layers] if scalar_lambda else [None] * 2
    assert all(lam > 1 for lam in lambdas) if lambda_above_one else True
    builder = NeedleBuilder(tiny_tokenizer, load_split(tiny_data, "val"))
    result, example = attention_eval(model, builder, 200, [0.0, 1.0], 2, 2, seed=seed % 1000)
    assert result["lambdas"] == lambdas and [r["depth"] for r in result["rows"]] == [0.0, 1.0]
    for row in result["rows"]:
        assert row["answer"] + row["noise"] + row["question"] == pytest.approx(row["total"], abs=1e-9)
        if attention == "standard":
            assert row["total"] == pytest.approx(1.0, abs=tol) and row["answer"] >= 0
        for layer, lam in zip(row["layers"], lambdas, strict=True):
            net = sum(layer["net"].values())
            if attention == "diff_v2":  # each head's row sums to 1 − λ_i(token), λ_i = sigmoid(·) ∈ (0, 1)
                lam = layer["lambda"]  # at the predicting token, the mean over heads and samples
                assert 0 < lam < 1
            assert net == pytest.approx(1.0 if lam is None else 1.0 - lam, abs=tol)  # the whole row
            if lam is not None:
                assert sum(layer["a1"].values()) == pytest.approx(1.0, abs=tol)
                assert sum(layer["a2"].values()) == pytest.approx(1.0, abs=tol)
            if lam is not None and attention != "diff_v2":  # one λ for every head: net = A1 − λ·A2 bucket by bucket
                for bucket in ("answer", "noise", "question"):
                    assert layer["net"][bucket] == pytest.approx(layer["a1"][bucket] - lam * layer["a2"][bucket])
        if lambda_above_one:
            assert row["total"] < 0  # each row's net mass is 1 − λ < 0
    assert example["map"].shape == (200, 200)


def test_recording_gives_the_maps_of_every_layer(seed):
    for attention, parts in (("standard", 1), ("shared_diff", 2), ("diff_v2", 3), ("shared_diff_v2", 3)):
        model = build_model(ModelConfig(attention=attention, n_heads=4 if attention == "standard" else 2)).eval()
        x = torch.randint(0, 512, (1, 20))
        with recording(model) as maps, torch.no_grad():
            logits = model(x)
        assert len(maps) == 2 and all(len(layer) == parts for layer in maps)
        h = model.config.n_heads
        assert all(m.shape == (1, h, 20, 20) for layer in maps for m in layer[:2])
        for m in (layer[i] for layer in maps for i in range(min(2, parts))):  # softmax rows: A, A1, A2, A_2i, A_2i+1
            assert torch.allclose(m.sum(-1), torch.ones(1, h, 20))
        if parts == 3:  # V2: λ of each head and query, a sigmoid; recording leaves the model's output as it was
            assert all(layer[2].shape == (1, h, 20) and ((layer[2] > 0) & (layer[2] < 1)).all() for layer in maps)
            with torch.no_grad():
                assert torch.allclose(model(x), logits, atol=1e-6)
        assert all(b.attention.recorder is None for b in model.layers)


def test_attention_map_labels_its_colour_bar(tmp_path, saved_figures):
    from shareddiff.plots import plot_attention_map

    example = {"map": torch.rand(16, 16).tril(), "answer": (4, 8), "depth": 0.5}
    plot_attention_map(example, tmp_path / "map.png", "title")
    main_ax, colour_bar = saved_figures[0].axes
    assert colour_bar.get_ylabel().startswith("attention weight, mean over layers and heads")
    assert "answer needle at 50%" in main_ax.get_title()
