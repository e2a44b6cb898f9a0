"""lm-evaluation-harness end to end on local tasks: accuracy recomputed by hand from log-likelihoods, and
generation (generate_until) at batch size 4 equal to batch size 1."""

import json
import os

import pytest
import torch

pytest.importorskip("lm_eval")

from shareddiff.cli import main
from shareddiff.hf.harness import run_harness
from shareddiff.train import load_model, train

DOCS = [
    {"question": "the module returns a", "choices": ["value", "class", "string"], "answer": 0},
    {"question": "def f(x):\n    return", "choices": ["x", "data", "name"], "answer": 0},
    {"question": "a list of", "choices": ["object", "type", "error", "python"], "answer": 2},
    {"question": "the function is used with", "choices": ["data", "attribute"], "answer": 1},
    {"question": "this that can be", "choices": ["new", "call"], "answer": 0},
]


@pytest.fixture
def local_task(tmp_path):
    data = tmp_path / "tiny_choice.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    (tmp_path / "tiny_choice.yaml").write_text(f"""task: tiny_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
""")
    return tmp_path


def loglikelihood(model, tokenizer, context: str, continuation: str) -> float:
    """Σ log p(continuation tokens | context), splitting tokens as the harness does: encode the whole
    string and the context, and score the tokens past the context's."""
    whole = tokenizer.encode(context + continuation)
    n_context = len(tokenizer.encode(context))
    ids = torch.tensor([whole])
    with torch.no_grad():
        logprobs = model(ids[:, :-1]).log_softmax(-1)[0]
    return sum(logprobs[i - 1, whole[i]].item() for i in range(n_context, len(whole)))


@pytest.mark.slow
def test_harness_accuracy_equals_hand_computation(make_run, local_task):
    result = train(make_run("train.max_steps=6"), progress=False)
    out = run_harness(result.checkpoint, ["tiny_choice"], include_path=str(local_task), batch_size=2, log_samples=True)
    model, tokenizer, _ = load_model(result.checkpoint)
    correct = []
    for doc in DOCS:
        scores = [loglikelihood(model, tokenizer, doc["question"], " " + c) for c in doc["choices"]]
        correct.append(max(range(len(scores)), key=scores.__getitem__) == doc["answer"])
        sample = next(s for s in out["samples"]["tiny_choice"] if s["doc"]["question"] == doc["question"])
        harness_scores = [r[0] for r in sample["filtered_resps"]]
        assert harness_scores == pytest.approx(scores, abs=1e-4)
    assert out["results"]["tiny_choice"]["acc,none"] == pytest.approx(sum(correct) / len(DOCS))


def test_unknown_task_is_named(make_run, local_task, capsys):
    result = train(make_run("train.max_steps=1"), progress=False)
    assert (
        main(["eval", "harness", str(result.checkpoint), "--tasks", "no_such_task", "--include-path", str(local_task)])
        == 2
    )
    assert "unknown harness task(s) ['no_such_task']" in capsys.readouterr().err


GENERATION_DOCS = [
    {"question": "the module returns a value of", "answer": "type"},
    {"question": "def f(x):\n    return", "answer": "x"},
    {"question": "a list", "answer": "of"},
    {"question": "the function is used with the data in a file for this class and", "answer": "name"},
    {"question": "this", "answer": "that"},
]


@pytest.fixture
def generation_task(tmp_path):
    data = tmp_path / "tiny_generation.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in GENERATION_DOCS))
    (tmp_path / "tiny_generation.yaml").write_text(f"""task: tiny_generation
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n\\n"]
  max_gen_toks: 6
  do_sample: false
metric_list:
  - metric: exact_match
""")
    return tmp_path


@pytest.mark.slow
def test_generate_until_batch_of_4_equals_batch_of_1(make_run, generation_task, tmp_path):
    """The harness left-pads generation batches; every continuation must be the one generated alone."""
    result = train(make_run("train.max_steps=2"), progress=False)
    texts = {}
    for batch_size in (1, 4):
        out = run_harness(
            result.checkpoint, ["tiny_generation"], str(generation_task), batch_size=batch_size, log_samples=True
        )
        texts[batch_size] = {s["doc"]["question"]: s["resps"][0][0] for s in out["samples"]["tiny_generation"]}
    assert len(texts[4]) == len(GENERATION_DOCS) and len(set(texts[1].values())) > 1  # continuations differ by prompt
    assert texts[4] == texts[1]
    argv = ["eval", "harness", str(result.checkpoint), "--tasks", "tiny_generation"]
    argv += ["--include-path", str(generation_task), "--batch-size", "4", "--out", str(tmp_path / "r.json")]
    assert main(argv) == 0
    assert "exact_match,none" in json.loads((tmp_path / "r.json").read_text())["results"]["tiny_generation"]


@pytest.mark.parametrize(
    ("tasks", "environ", "offline", "said"),
    [
        (["tiny_choice"], {}, True, "harness: offline, every task is defined under --include-path with local data"),
        (["arc_easy"], {}, False, "harness: online, arc_easy come from the Hugging Face hub"),
        (["tiny_choice", "arc_easy"], {}, False, "harness: online, arc_easy come from"),
        (["arc_easy"], {"HF_HUB_OFFLINE": "1"}, True, "harness: offline, as HF_HUB_OFFLINE=1 asks"),
        (["arc_easy"], {"HF_DATASETS_OFFLINE": "true"}, True, "harness: offline, as HF_DATASETS_OFFLINE=true asks"),
        (["arc_easy"], {"HF_HUB_OFFLINE": "0"}, False, "harness: online"),
    ],
)
def test_hub_is_reached_unless_asked_or_every_task_is_local(local_task, tasks, environ, offline, said):
    from shareddiff.hf.harness import hub_mode

    mode, why = hub_mode(tasks, str(local_task), environ)
    assert mode is offline and why.startswith(said)


def test_a_local_yaml_over_hub_data_is_not_local(tmp_path):
    from shareddiff.hf.harness import local_tasks

    (tmp_path / "hub_task.yaml").write_text("task: hub_task\ndataset_path: allenai/ai2_arc\n")
    (tmp_path / "file_task.yaml").write_text("task: file_task\ndataset_path: json\n")
    assert local_tasks(str(tmp_path)) == {"file_task"}


def test_the_harness_leaves_the_environment_online_for_hub_tasks(make_run, monkeypatch, capsys):
    import shareddiff.hf.harness as harness

    for name in harness.OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    result = train(make_run("train.max_steps=1"), progress=False)
    assert main(["eval", "harness", str(result.checkpoint), "--tasks", "no_such_task"]) == 2
    err = capsys.readouterr().err
    assert "harness: online, no_such_task come from the Hugging Face hub" in err
    assert all(name not in os.environ for name in harness.OFFLINE_VARIABLES)
