"""What a resume counts as the same data: a prepared folder by its content (the manifest's shard hashes), not by
how its path is spelled; a tokenizer by its file's hash; an MQAR run by its [mqar] section."""

import dataclasses
import json
import logging
import shutil

import pytest

from shareddiff.data import prepare_splits
from shareddiff.train import train
from shareddiff.train.trainer import _check_same_batches
from tests.conftest import synthetic_documents
from tests.eval.test_mqar import mqar_run
from tests.train.test_trainer import kill_before_first_checkpoint

REFUSED = r"checkpoint step_00000002 was trained on another batch sequence \("


@pytest.fixture
def finished(make_run, tmp_path):
    """A finished 2-step run over the tiny data folder (its checkpoint at step 2)."""
    train(make_run("train.max_steps=2"), progress=False)
    return tmp_path / "run"


@pytest.fixture
def other_data(tmp_path, tiny_tokenizer):
    """A prepared folder of other text, tokenized with the same tokenizer."""
    out = tmp_path / "other"
    splits = {"train": synthetic_documents(150, 100, seed=5), "val": synthetic_documents(10, 100, seed=6)}
    prepare_splits(splits, out, tiny_tokenizer)
    return out


@pytest.mark.parametrize("spelling", ["relative", "trailing slash", "symlink", "copy"])
def test_resume_accepts_the_same_data_under_another_path(
    make_run, finished, tiny_data, tmp_path, monkeypatch, spelling
):
    """The recorded data.path is absolute; the same prepared data named otherwise continues the run (a copy of
    the folder holds the same shards: the same batches)."""
    if spelling == "relative":
        monkeypatch.chdir(tiny_data.parent)
        path = tiny_data.name
    elif spelling == "trailing slash":
        path = f"{tiny_data}/"
    elif spelling == "symlink":
        path = tmp_path / "link"
        path.symlink_to(tiny_data, target_is_directory=True)
    else:
        path = shutil.copytree(tiny_data, tmp_path / "copy")
    result = train(make_run("train.max_steps=2", f"data.path={path}"), resume=True, progress=False)
    assert result.already_complete and result.step == 2


def test_resume_says_when_the_same_data_lies_elsewhere(make_run, finished, tiny_data, tmp_path, caplog):
    copy = shutil.copytree(tiny_data, tmp_path / "copy")
    with caplog.at_level(logging.INFO, logger="shareddiff"):
        train(make_run("train.max_steps=2", f"data.path={copy}"), resume=True, progress=False)
    assert f"data.path {str(tiny_data)!r} → {str(copy)!r}: the same prepared data (content sha256 " in caplog.text


def test_resume_refuses_other_data_naming_both_folders_and_the_fix(make_run, finished, tiny_data, other_data):
    with pytest.raises(ValueError, match=REFUSED) as refused:
        train(make_run("train.max_steps=2", f"data.path={other_data}"), resume=True, progress=False)
    message = str(refused.value)
    assert f"data.path {str(tiny_data)!r} → {str(other_data)!r} (other content: sha256 " in message
    assert "Resume with the run's own values" in message and "or start a new run folder" in message


def test_resume_refuses_data_prepared_again_in_place(make_run, tmp_path, tiny_data, other_data):
    """The same data.path whose content changed since the checkpoint (prepared again from other text): the
    batches of the rest of the run would come from other tokens."""
    data = shutil.copytree(tiny_data, tmp_path / "data")
    train(make_run("train.max_steps=2", f"data.path={data}"), progress=False)
    shutil.rmtree(data)
    shutil.copytree(other_data, data)
    with pytest.raises(ValueError, match=REFUSED + rf"data.path {str(data)!r} → {str(data)!r} \(other content: "):
        train(make_run("train.max_steps=2", f"data.path={data}"), resume=True, progress=False)


def test_resume_accepts_the_same_tokenizer_file_under_another_path(make_run, finished, tiny_tokenizer, tmp_path):
    link = tmp_path / "tokenizer-link.json"
    link.symlink_to(tiny_tokenizer.path)
    result = train(make_run("train.max_steps=2", f"data.tokenizer={link}"), resume=True, progress=False)
    assert result.already_complete


def test_restart_of_a_record_without_content_hashes_compares_resolved_paths(make_run, tmp_path, tiny_data, other_data):
    """run_config.json written before it recorded the data's and tokenizer's hashes: the paths are compared
    once resolved (symlinks, relative spelling, trailing slash)."""
    train(make_run("train.max_steps=4"), progress=False)
    kill_before_first_checkpoint(tmp_path / "run", after_step=2)
    config_file = tmp_path / "run" / "run_config.json"
    recorded = json.loads(config_file.read_text())
    for key in ("data_sha256", "tokenizer_sha256"):
        recorded.pop(key)
    config_file.write_text(json.dumps(recorded))
    with pytest.raises(ValueError, match=rf"another batch sequence \(data.path {str(tiny_data)!r} → "):
        train(make_run("train.max_steps=4", f"data.path={other_data}"), resume=True, progress=False)
    link = tmp_path / "link"
    link.symlink_to(tiny_data, target_is_directory=True)
    assert train(make_run("train.max_steps=4", f"data.path={link}/"), resume=True, progress=False).step == 4


@pytest.fixture(scope="module")
def mqar_finished(tmp_path_factory):
    """The folder of a finished 1-step MQAR run (vocabulary 64, 4 pairs, model vocabulary 128)."""
    tmp_path = tmp_path_factory.mktemp("mqar")
    train(mqar_run(tmp_path, *MQAR_RUN), progress=False)
    return tmp_path


MQAR_RUN = ("train.max_steps=1", "optim.warmup_steps=0", "train.eval_every=1", "model.vocab_size=128")


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("mqar.vocab_size=128", r"mqar.vocab_size 64 → 128"),
        ("mqar.pairs=3", r"mqar.pairs 4 → 3"),
        ("mqar.queries=2", r"mqar.queries None → 2"),
        ("mqar.key_len=2", r"mqar.key_len 1 → 2"),
        ("mqar.updates=1", r"mqar.updates 0 → 1"),
        ("mqar.power_a=1.0", r"mqar.power_a 0.01 → 1.0"),
        ("train.seed=7", r"train.seed \d+ → 7"),
        ("data.seq_len=48", r"data.seq_len 64 → 48"),
    ],
)
def test_resume_of_an_mqar_run_refuses_another_task(mqar_finished, override, match):
    """Every [mqar] field but eval_samples draws other training sequences (data.mqar.mqar_batch)."""
    with pytest.raises(ValueError, match=r"checkpoint step_00000001 was trained on another batch sequence \(" + match):
        train(mqar_run(mqar_finished, *MQAR_RUN, override), resume=True, progress=False)


def test_resume_of_an_mqar_run_accepts_another_evaluation_set_size(mqar_finished):
    """mqar.eval_samples sizes the fixed evaluation set only: the training batches stay the same."""
    result = train(mqar_run(mqar_finished, *MQAR_RUN, "mqar.eval_samples=16"), resume=True, progress=False)
    assert result.already_complete and result.step == 1


def test_resume_of_a_corpus_run_ignores_the_mqar_section(make_run, finished):
    """[mqar] is read only when data.source = "mqar": a corpus run's resume check ignores it (a recipe's [mqar]
    differing from the record's), and an mqar.* override on such a run is refused, naming the fix."""
    run = make_run("train.max_steps=2")
    run.mqar = dataclasses.replace(run.mqar, pairs=3)
    result = train(run, resume=True, progress=False)
    assert result.already_complete
    with pytest.raises(ValueError, match=r"mqar.pairs set, but \[mqar\] is read only with data.source=mqar"):
        make_run("train.max_steps=2", "mqar.pairs=3")


def test_an_mqar_field_missing_from_an_older_record_counts_as_its_default(mqar_finished):
    """A record written before a field existed was trained with that field's default."""
    run = mqar_run(mqar_finished, *MQAR_RUN)
    recorded = {"run": run.to_dict(), "world_size": 1}
    del recorded["run"]["mqar"]["updates"], recorded["run"]["mqar"]["power_a"]
    _check_same_batches(recorded, run, 1, {"data_sha256": None, "tokenizer_sha256": None}, "the record")
    recorded["run"]["mqar"]["pairs"] = 3
    with pytest.raises(ValueError, match=r"the record was trained on another batch sequence \(mqar.pairs 3 → 4\)"):
        _check_same_batches(recorded, run, 1, {"data_sha256": None, "tokenizer_sha256": None}, "the record")
