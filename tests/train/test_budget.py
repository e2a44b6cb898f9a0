"""Runs sized by tokens per parameter, and what every run records (budget protocol, docs/results.md)."""

import json
import math

import pytest

from shareddiff.config import load_recipe
from shareddiff.model import build_model
from shareddiff.train import train
from shareddiff.train.metrics import read_metrics
from shareddiff.train.trainer import RUN_CONFIG, layer_lambdas


def test_tokens_per_param_sets_the_step_count_and_warmup_fraction():
    run = load_recipe(
        None,
        "shared_diff-tiny",
        ["train.tokens_per_param=10", "optim.warmup_fraction=0.03", "data.seq_len=128", "train.micro_batch=8"],
    )
    sized = run.sized(n_params=1_000_003, world_size=2)
    per_step = 8 * 1 * 128 * 2
    assert sized.train.max_steps == math.ceil(10 * 1_000_003 / per_step) == 4883
    assert sized.optim.warmup_steps == math.ceil(0.03 * 4883) == 147
    assert run.train.max_steps == 1000 and run.optim.warmup_steps == 100  # the recipe itself is unchanged


def test_without_a_budget_the_recipe_decides():
    run = load_recipe(None, "shared_diff-tiny", ["train.max_steps=77", "optim.warmup_steps=5"])
    sized = run.sized(n_params=10**9)
    assert (sized.train.max_steps, sized.optim.warmup_steps) == (77, 5)


def test_a_count_given_on_the_command_line_wins_over_the_recipes_budget(tmp_path):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text("[train]\ntokens_per_param = 10\n[optim]\nwarmup_fraction = 0.03\n")
    budget = load_recipe(str(recipe), "shared_diff-tiny", ["data.seq_len=128", "train.micro_batch=8"])
    assert budget.sized(n_params=1_000_003).train.max_steps == math.ceil(10 * 1_000_003 / (8 * 128)) == 9766
    run = load_recipe(str(recipe), "shared_diff-tiny", ["train.max_steps=30", "optim.warmup_steps=3"])
    assert (run.train.tokens_per_param, run.optim.warmup_fraction) == (0, 0)
    sized = run.sized(n_params=1_000_003)
    assert (sized.train.max_steps, sized.optim.warmup_steps) == (30, 3)
    # the last of the two wins: a budget set after the count (an experiment's run, then the command line) stays
    again = load_recipe(str(recipe), "shared_diff-tiny", ["train.max_steps=30", "train.tokens_per_param=2"])
    assert again.sized(n_params=1_000_003, world_size=1).train.max_steps == math.ceil(2 * 1_000_003 / (8 * 256))
    assert again.optim.warmup_fraction == 0.03


@pytest.mark.parametrize(
    ("override", "field"),
    [("train.tokens_per_param=-1", "train.tokens_per_param"), ("optim.warmup_fraction=0.7", "optim.warmup_fraction")],
)
def test_bad_budget_fields_are_named(override, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        load_recipe(None, "shared_diff-tiny", [override])


def test_a_sized_run_records_budget_lambda_and_grad_norm(make_run):
    run = make_run("train.tokens_per_param=0.05", "optim.warmup_fraction=0.05", "train.log_every=2")
    result = train(run, progress=False)
    config = json.loads((result.run_dir / RUN_CONFIG).read_text())
    params = config["params"]
    per_step = 4 * 32
    steps = math.ceil(0.05 * params / per_step)
    assert config["run"]["train"]["max_steps"] == steps == result.step
    assert config["run"]["optim"]["warmup_steps"] == math.ceil(0.05 * steps)
    assert config["tokens_per_param"] == pytest.approx(steps * per_step / params)
    assert config["passes"] == pytest.approx(steps * per_step / config["train_tokens"])
    rows = [r for r in read_metrics(result.run_dir) if "loss" in r]
    assert [r["step"] for r in rows][-1] == steps
    model, _, _ = _load(result.checkpoint)
    final = rows[-1]
    assert final["lambda"] == pytest.approx(layer_lambdas(model), abs=1e-6)  # the trained model's λ per layer
    assert len(final["lambda"]) == model.config.n_layers
    assert all(math.isfinite(r["grad_norm"]) and r["grad_norm"] > 0 for r in rows)
    assert final["passes"] == pytest.approx(final["tokens"] / config["train_tokens"])
    first = rows[0]["lambda"]
    assert first != final["lambda"]  # λ moves during training, and the record shows it


def _load(checkpoint):
    from shareddiff.train import load_model

    return load_model(checkpoint)


@pytest.mark.parametrize(("dtype", "tol"), [("float32", 1e-6), ("float64", 1e-14)])
def test_lambdas_equal_the_closed_form(dtype, tol):
    """Reference: the closed form in float64; a float64 model's λ is float64 (1e-14), a float32 one's float32."""
    import torch

    from shareddiff.config import ModelConfig

    torch.manual_seed(0)
    model = build_model(ModelConfig.from_preset("diff-tiny"), dtype=getattr(torch, dtype))
    for block, value in zip(model.layers, layer_lambdas(model), strict=True):
        a = block.attention
        expected = (
            math.exp(torch.dot(a.lambda_q1.double(), a.lambda_k1.double()).item())
            - math.exp(torch.dot(a.lambda_q2.double(), a.lambda_k2.double()).item())
            + a.lambda_init
        )
        assert value == pytest.approx(expected, abs=tol)
    assert layer_lambdas(build_model(ModelConfig.from_preset("transformer-tiny"))) is None


def test_a_budget_counts_every_micro_batch_of_every_process():
    """Reference: tokens per step = micro_batch · grad_accum · seq_len · world (4 · 3 · 64 · 2 = 1536)."""
    run = load_recipe(
        None,
        "shared_diff-tiny",
        ["train.tokens_per_param=7", "train.micro_batch=4", "train.grad_accum=3", "data.seq_len=64"],
    )
    assert run.tokens_per_step(world_size=2) == 1536
    assert run.sized(n_params=123_457, world_size=2).train.max_steps == math.ceil(7 * 123_457 / 1536) == 563


def test_a_run_with_accumulation_trains_its_budget(make_run):
    """The tokens the trainer reports having trained (every micro-batch) land within one step of the budget."""
    budget = ["train.tokens_per_param=0.01", "train.micro_batch=2", "train.grad_accum=2", "train.eval_every=100"]
    result = train(make_run(*budget), progress=False)
    params = json.loads((result.run_dir / RUN_CONFIG).read_text())["params"]
    trained = [r for r in read_metrics(result.run_dir) if "loss" in r][-1]["tokens"]
    per_step = 2 * 2 * 32
    assert trained == result.step * per_step
    assert 0.01 * params <= trained < 0.01 * params + per_step


def test_the_logged_grad_norm_is_the_global_norm_before_clipping(make_run, monkeypatch):
    """Reference: ‖g‖₂ over every parameter's gradient in float64, taken as the trainer clips them. The clip
    (0.01) is far below the norm, so a clipped or made-up value in metrics.jsonl would not match."""
    import torch

    real_clip, norms = torch.nn.utils.clip_grad_norm_, []

    def clip_and_measure(parameters, max_norm, *args, **kwargs):
        parameters = list(parameters)
        grads = [p.grad.double().flatten() for p in parameters if p.grad is not None]
        norms.append(torch.cat(grads).norm().item())
        return real_clip(parameters, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip_and_measure)
    result = train(make_run("train.max_steps=3", "optim.grad_clip=0.01", "train.eval_every=100"), progress=False)
    logged = [r["grad_norm"] for r in read_metrics(result.run_dir) if "loss" in r]
    assert len(norms) == 3 and min(norms) > 0.1
    assert logged == pytest.approx(norms, rel=1e-5)
