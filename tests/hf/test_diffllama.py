"""DiffLlama export: transformers' own DiffLlamaForCausalLM gives the project model's logits."""

import pytest
import torch

pytest.importorskip("transformers")

from shareddiff import ModelConfig, build_model
from shareddiff.hf import load_pretrained, to_diffllama
from tests.conftest import rel_err

CASES = {
    "diff": dict(attention="diff"),
    "diff-gqa": dict(attention="diff", n_heads=4, n_kv_heads=2),
    "shared_diff-branches": dict(attention="shared_diff"),
    "shared_diff-branches-gqa": dict(attention="shared_diff", n_heads=4, n_kv_heads=1),
    "shared_diff-heads": dict(attention="shared_diff", base_sharing="heads"),
    "shared_diff-heads-gqa": dict(attention="shared_diff", base_sharing="heads", n_heads=4, n_kv_heads=2),
    "shared_diff-tied-weightless-norm": dict(attention="shared_diff", tie_embeddings=True, head_norm_weight=False),
}


def trained_looking(model):
    """Move the parameters that start at constants (norm weights, λ) so the test sees them."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            elif "lambda_" in name:
                p.normal_(0, 0.3)
    return model


@pytest.mark.parametrize("case", list(CASES))
def test_diffllama_logits_equal(seed, case):
    config = ModelConfig(d_model=64, vocab_size=120, max_seq_len=64, n_layers=3, **CASES[case])
    model = trained_looking(build_model(config)).eval()
    exported = to_diffllama(model)
    assert type(exported).__name__ == "DiffLlamaForCausalLM"
    ids = torch.randint(0, 120, (2, 41))
    with torch.no_grad():
        assert rel_err(exported(ids).logits, model(ids)) <= 1e-4


@pytest.mark.parametrize("case", ["diff-gqa", "shared_diff-branches", "shared_diff-heads-gqa"])
def test_float64_model_exports_float64_projections(seed, case):
    """A float64 model exports a float64 DiffLlama whose query/key projections (Shared DIFF's merged W + A·B
    included) give the model's Q1, Q2, K1, K2 to 1e-12, up to DiffLlama's head order and RoPE pair order
    ((x[2j], x[2j+1]) → (x[j], x[j + d/2])); float32 weights would leave ~1e-7. Its logits agree only to ~1e-7:
    transformers' DiffLlama itself takes RoPE, λ, softmax and RMSNorm in float32."""
    config = ModelConfig(d_model=64, vocab_size=120, max_seq_len=64, n_layers=2, **CASES[case])
    model = trained_looking(build_model(config, dtype=torch.float64)).eval()
    exported = to_diffllama(model)
    assert {p.dtype for p in exported.parameters()} == {torch.float64}
    d = config.head_dim
    pairs = torch.cat([torch.arange(0, d, 2), torch.arange(1, d, 2)])  # our interleaved pairs, half-split
    x = torch.randn(2, 9, config.d_model, dtype=torch.float64)
    with torch.no_grad():
        for ours, theirs in zip(model.layers, exported.model.layers, strict=True):
            q1, q2, k1, k2, _ = ours.attention.project_qkv(x)  # (B, N, heads, d) each
            for proj, first, second in ((theirs.self_attn.q_proj, q1, q2), (theirs.self_attn.k_proj, k1, k2)):
                expected = torch.cat([first, second], dim=2)[..., pairs]  # sub-heads i and i + heads: Q1_i, Q2_i
                assert rel_err(proj(x).unflatten(-1, (-1, d)), expected) <= 1e-12
        ids = torch.randint(0, 120, (2, 17))
        assert rel_err(exported(ids).logits, model(ids)) <= 1e-5


def test_export_cli_round_trip(tmp_path, make_run):
    from shareddiff.cli import main
    from shareddiff.train import load_model, train

    result = train(make_run("train.max_steps=2", "model.n_layers=1"), progress=False)
    assert main(["export", str(result.checkpoint), "--to", "diffllama", str(tmp_path / "dl")]) == 0
    exported, tok = load_pretrained(tmp_path / "dl")
    model, ours, _ = load_model(result.checkpoint)
    ids = torch.tensor([ours.encode("the module returns a value")])
    assert tok("the module returns a value")["input_ids"] == ids[0].tolist()
    with torch.no_grad():
        assert rel_err(exported(ids).logits, model(ids)) <= 1e-4


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (dict(attention="standard", n_heads=4), "differential attention only"),
        (dict(attention="diff", head_norm=False), "head_norm=False"),
        (dict(attention="diff", lambda_init=0.8), "depth schedule"),
        (dict(attention="diff_v2"), r"attention='diff_v2' .* has no DiffLlama form: export it with --to hf"),
        (dict(attention="shared_diff_v2"), r"attention='shared_diff_v2' .* has no DiffLlama form"),
    ],
)
def test_unexportable_models(fields, message):
    with pytest.raises(ValueError, match=message):
        to_diffllama(build_model(ModelConfig(vocab_size=50, **fields)))


def test_diffllama_ids_are_the_tokenizers_not_transformers_defaults():
    """No eos/bos of transformers' defaults (2/1) on an export: the given end-of-text id, as the wrapper takes it."""
    from shareddiff.hf import wrap

    model = build_model(ModelConfig.from_preset("diff-tiny")).eval()
    bare = to_diffllama(model)
    assert (bare.config.eos_token_id, bare.config.bos_token_id, bare.generation_config.eos_token_id) == (None,) * 3
    named = to_diffllama(model, eos_id=7)
    ids = (named.config.eos_token_id, named.config.pad_token_id, named.generation_config.eos_token_id)
    assert ids == (7, 7, 7) and named.generation_config.pad_token_id == 7
    assert wrap(model, 7).generation_config.eos_token_id == 7
