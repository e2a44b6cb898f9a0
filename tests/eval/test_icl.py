"""Many-shot ICL: constrained decoding by hand, the protocol, datasets."""

import hashlib
import itertools
import re

import pytest
import torch

from shareddiff import ModelConfig, build_model
from shareddiff.eval.icl import (
    ICL_DATA,
    alternate_by_class,
    classify,
    demo_ids,
    icl_eval,
    label_scores,
    load_bundled,
    load_examples,
    query_ids,
    synthetic_intents,
)


@pytest.fixture
def model():
    return build_model(ModelConfig(vocab_size=300, max_seq_len=256)).eval()


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-4), (torch.float64, 1e-10)])
def test_constrained_decoding_picks_the_highest_total_loglikelihood(seed, model, tiny_tokenizer, dtype, tol):
    """Reference: each label's log-likelihood from one uncached forward (float64 log-softmax for a float64 model)."""
    model = model.to(dtype)
    tok = tiny_tokenizer
    demos = [("please check my data", "check_data"), ("find the module", "find_module")]
    labels = ["check_data", "find_module", "open_file"]
    prompt = [t for d in demos for t in demo_ids(tok, *d)] + query_ids(tok, "check the data")
    by_hand = []
    with torch.no_grad():
        for label in labels:
            ids = tok.encode(" " + label)
            logp = model(torch.tensor([prompt + ids])).log_softmax(-1)[0]
            by_hand.append(sum(logp[len(prompt) - 1 + i, t].item() for i, t in enumerate(ids)))
    assert label_scores(model, prompt, [tok.encode(" " + lb) for lb in labels]) == pytest.approx(by_hand, abs=tol)
    assert classify(model, tok, demos, "check the data", labels) == max(range(3), key=by_hand.__getitem__)


def test_protocol(model, tiny_tokenizer):
    data = synthetic_intents(n_classes=4, per_class=10)
    train, test = data[:20], data[20:26]
    result = icl_eval(model, tiny_tokenizer, train, test, shots=None, permutations=2, seed=1)
    shots = [r["shots"] for r in result["rows"]]
    assert shots[0] == 1 and all(b == 2 * a for a, b in itertools.pairwise(shots))
    assert all(r["prompt_tokens"] <= 256 for r in result["rows"])
    row = result["rows"][-1]
    assert len(row["random_order"]["values"]) == 2 and 0 <= row["accuracy"] <= 1
    with pytest.raises(ValueError, match="beyond max_seq_len=256; ask for fewer shots"):
        icl_eval(model, tiny_tokenizer, train, test, shots=[20], permutations=1, seed=1)


def test_alternating_order():
    import random

    demos = [("a", "x"), ("b", "x"), ("c", "y"), ("d", "y"), ("e", "z")]
    labels = [d[1] for d in alternate_by_class(demos, random.Random(0))]
    assert sorted(labels) == ["x", "x", "y", "y", "z"]
    assert all(a != b for a, b in itertools.pairwise(labels)) and len(set(labels[:3])) == 3


def test_dataset_formats(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"text": "hi", "label": 1}\n')
    (tmp_path / "d.csv").write_text("text,category\nhello,greet\n")
    assert load_examples(tmp_path / "d.jsonl") == [("hi", "1")]
    assert load_examples(tmp_path / "d.csv") == [("hello", "greet")]
    with pytest.raises(ValueError, match="does not exist"):
        load_examples(tmp_path / "none.jsonl")


def test_paper_datasets_ship_with_their_licences_unchanged():
    listed = re.findall(r"^([0-9a-f]{64})  (\S+)$", (ICL_DATA / "README.md").read_text(), re.MULTILINE)
    assert len(listed) == 8
    for digest, name in listed:
        assert hashlib.sha256((ICL_DATA / name).read_bytes()).hexdigest() == digest, name
    assert (ICL_DATA / "banking77" / "LICENSE").is_file() and (ICL_DATA / "clinc150" / "LICENSE").is_file()


def test_paper_datasets_load():
    trec = load_examples(ICL_DATA / "trec" / "train_5500.label")
    assert len(trec) == 5452 and len({label for _, label in trec}) == 6
    fine = load_examples(ICL_DATA / "trec" / "train_5500.label", fine_labels=True)
    assert 45 <= len({label for _, label in fine}) <= 50
    clinc = load_examples(ICL_DATA / "clinc150" / "data_full.json", split="test")
    assert len(clinc) == 4500 and len({label for _, label in clinc}) == 150
    banking = load_examples(ICL_DATA / "banking77" / "test.csv")
    assert len(banking) == 3080 and len({label for _, label in banking}) == 77


@pytest.mark.parametrize(
    ("name", "sizes", "classes"),
    [("trec", (5452, 500), 6), ("banking77", (10003, 3080), 77), ("clinc150", (15000, 4500), 150)],
)
def test_bundled_datasets_by_name(name, sizes, classes):
    train, test = load_bundled(name)
    assert (len(train), len(test)) == sizes
    assert len({label for _, label in test}) == classes and {lb for _, lb in test} <= {lb for _, lb in train}
    with pytest.raises(ValueError, match=r"no bundled ICL dataset 'sst2'; the bundled ones are \['banking77'"):
        load_bundled("sst2")


def _spread(values):
    return {"values": values, "mean": sum(values) / len(values), "std": 0.0, "min": min(values), "max": max(values)}


def test_icl_plot_keeps_scale_shows_both_orders_and_chance(tmp_path, saved_figures):
    from shareddiff.plots import plot_icl

    flat = [0.25] * 3  # every order gives the same accuracy: a flat result must look flat
    rows = [
        {"shots": k, "accuracy": 0.25, "random_order": _spread(flat), "class_alternating": _spread(flat)}
        for k in (1, 2, 4)
    ]
    plot_icl({"labels": 6, "permutations": 3, "rows": rows}, tmp_path / "icl.png", "title")
    means, spread = saved_figures[0].axes
    assert means.get_ylim() == (0, 1)
    low, high = spread.get_ylim()
    assert high - low >= 0.1  # not zoomed to ±0.0075 around a flat line
    lines = {line.get_label(): line for line in means.get_lines()}
    assert set(lines) == {"random order", "class-alternating", "chance (1/6)"}
    assert lines["chance (1/6)"].get_ydata()[0] == pytest.approx(1 / 6)
    random_x, alternating_x = (lines[k].get_xdata() for k in ("random order", "class-alternating"))
    assert all(a < b for a, b in zip(random_x, alternating_x, strict=True))  # side by side, none hidden
