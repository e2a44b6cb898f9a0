"""The command line: data prepare, tokenizer train, train, generate, export; each bad input a one-line message."""

import json
import os
import re
import stat
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from shareddiff.cli import main
from shareddiff.train import load_model
from tests.conftest import in_subprocess_without_triton_interpreter, synthetic_documents


@pytest.fixture
def corpus(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i, doc in enumerate(synthetic_documents(60, 60)):
        (folder / f"{i}.txt").write_text(doc)
    return folder


def test_prepare_train_generate_export(tmp_path, corpus, capsys):
    tok = tmp_path / "tok.json"
    assert main(["tokenizer", "train", str(corpus), "--out", str(tok), "--vocab-size", "290"]) == 0
    assert (
        main(
            [
                "data",
                "prepare",
                str(corpus),
                "--out",
                str(tmp_path / "d"),
                "--tokenizer",
                str(tok),
                "--val-fraction",
                "0.2",
            ]
        )
        == 0
    )
    manifest = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert manifest["splits"]["train"]["documents"] + manifest["splits"]["val"]["documents"] == 60
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--preset",
                "diff-tiny",
                f"data.path={tmp_path / 'd'}",
                "--no-progress",
                "--data.tokenizer",
                str(tok),
                "data.seq_len=32",
                "data.val_tokens=256",
                "train.max_steps=4",
                "train.micro_batch=2",
                "train.eval_every=2",
                "train.device=cpu",
                f"train.out_dir={run}",
            ]
        )
        == 0
    )
    assert "done: step 4" in capsys.readouterr().out
    assert (
        main(
            [
                "generate",
                str(run),
                "--prompt",
                "the module",
                "--max-new-tokens",
                "8",
                "--num-samples",
                "2",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.count("--- sample") == 2 and "the module" in out
    assert main(["export", str(run), "--to", "safetensors", str(tmp_path / "w.safetensors")]) == 0
    model, _, _ = load_model(run)
    weights = load_file(tmp_path / "w.safetensors")
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())


def test_errors_are_one_line_messages(tmp_path, capsys):
    assert main(["generate", str(tmp_path), "--prompt", "x"]) == 2
    assert "holds no checkpoint; pass a run folder" in capsys.readouterr().err
    (tmp_path / "state.json").write_text('{"format": "something-else"}')
    assert main(["generate", str(tmp_path), "--prompt", "x"]) == 2
    assert "is not a shareddiff-checkpoint/2 checkpoint" in capsys.readouterr().err
    assert main(["train", "--preset", "shared_diff-tiny", "train.max_steps"]) == 2
    assert "must look like section.key=value" in capsys.readouterr().err
    assert main(["train", "--config", str(tmp_path / "none.toml")]) == 2
    assert "recipe" in capsys.readouterr().err
    assert main(["data", "prepare", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_mix_flag_and_override_forms_agree():
    from shareddiff.config import load_recipe

    assert load_recipe(None, "shared_diff-tiny", ['data.mix="needle:0.3"']).data.mix == "needle:0.3"
    assert load_recipe(None, "shared_diff-tiny", ["data.mix=needle:0.3"]).data.mix == "needle:0.3"


def test_data_prepare_says_what_it_read_and_which_suffixes_it_takes(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["data", "prepare", str(empty), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"no readable documents in {empty}: found no files" in err and "left no validation" not in err
    code = tmp_path / "code"
    code.mkdir()
    for i, doc in enumerate(synthetic_documents(30, 40)):
        (code / f"m{i}.py").write_text(doc)
    (code / "notes.c").write_text("int x;")
    assert main(["data", "prepare", str(code), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "found only files left out for their suffix (1 .c, 30 .py)" in err
    assert "folders are read for .txt, .md, .rst, .text, files without a suffix, .jsonl and .parquet" in err
    assert "name other files explicitly (e.g. corpus/*.py) to read them as plain text" in err
    named = [str(p) for p in sorted(code.glob("*.py"))]
    assert main(["data", "prepare", *named, "--out", str(tmp_path / "o"), "--val-fraction", "0.2"]) == 0
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["splits"]["train"]["documents"] + manifest["splits"]["val"]["documents"] == 30
    (code / "doc.txt").write_text("some text")
    assert main(["data", "prepare", str(code), "--out", str(tmp_path / "p"), "--val", str(code / "doc.txt")]) == 0
    assert "read 1 file(s); left out 1 .c, 30 .py" in capsys.readouterr().err
    blank = tmp_path / "blank"
    blank.mkdir()
    (blank / "a.txt").write_text("  \n")
    assert main(["data", "prepare", str(blank), "--out", str(tmp_path / "q")]) == 2
    assert "the 1 file(s) read hold no text (every document is empty)" in capsys.readouterr().err


def test_tokenizer_train_refuses_empty_input_and_says_when_the_vocabulary_falls_short(tmp_path, capsys):
    blank = tmp_path / "blank"
    blank.mkdir()
    (blank / "a.txt").write_text("")
    out = tmp_path / "tok.json"
    assert main(["tokenizer", "train", str(blank), "--out", str(out)]) == 2
    assert "hold no text to learn a vocabulary from" in capsys.readouterr().err and not out.exists()
    (blank / "a.txt").write_text("the module returns a value. " * 20)
    assert main(["tokenizer", "train", str(blank), "--out", str(out), "--vocab-size", "16384"]) == 0
    text = capsys.readouterr().out
    reached = json.loads(out.read_text())["model"]["vocab"]
    assert 257 < len(reached) < 16384
    assert f"note: the corpus reached only {len(reached)} of the 16384 entries asked" in text
    assert f"pass --vocab-size {len(reached)}" in text
    assert main(["tokenizer", "train", str(blank), "--out", str(out), "--vocab-size", str(len(reached))]) == 0
    assert "note:" not in capsys.readouterr().out  # the size the note suggests is reached


@pytest.fixture
def tiny_run(make_run):
    from shareddiff.train import train

    return train(make_run("train.max_steps=2", "checkpoint.every=2"), progress=False)


def test_missing_checkpoint_tokenizer_names_the_one_to_copy(tiny_run, tiny_tokenizer, capsys):
    (tiny_run.checkpoint / "tokenizer.json").unlink()
    assert main(["generate", str(tiny_run.checkpoint), "--prompt", "the"]) == 2
    err = capsys.readouterr().err
    assert "tokenizer.json is missing; copy the tokenizer this run was trained with (data.tokenizer: " in err
    assert f"{tiny_tokenizer.path}, sha256 {tiny_tokenizer.sha256[:12]}" in err
    assert "train one with" not in err


def test_data_path_at_raw_text_says_to_prepare_it_elsewhere(make_run, corpus):
    from shareddiff.train import train

    with pytest.raises(ValueError) as caught:
        train(make_run(f"data.path={corpus}"), progress=False)
    message = str(caught.value)
    assert f"{corpus} holds text files, not prepared token shards" in message
    assert f"--out {corpus}-tokens" in message and f"data.path={corpus}-tokens" in message
    assert f"--out {corpus}`" not in message


def test_generate_checks_its_flags_caps_aloud_and_reports_speed(tiny_run, capsys):
    ckpt = str(tiny_run.checkpoint)
    for flags, message in [
        (["--temperature", "-1"], "--temperature -1.0 must be ≥ 0"),
        (["--top-p", "0"], "--top-p 0.0 must be in (0, 1]"),
        (["--top-k", "-2"], "--top-k -2 must be ≥ 0"),
        (["--max-new-tokens", "0"], "--max-new-tokens 0 must be at least 1"),
        (["--num-samples", "0"], "--num-samples 0 must be at least 1"),
    ]:
        assert main(["generate", ckpt, "--prompt", "the", *flags]) == 2
        assert message in capsys.readouterr().err
    assert main(["generate", ckpt, "--prompt", "the module", "--max-new-tokens", "1000", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    prompt_len = len(load_model(ckpt)[1].encode("the module"))
    assert f"--max-new-tokens 1000 capped at {256 - prompt_len}: the model's context is 256 tokens" in captured.err
    last = captured.err.splitlines()[-1]
    assert re.search(r"^(1 new token|\d+ new tokens) in \d+\.\d\d s: [\d,.]+ tokens/s$", last)
    assert captured.out.startswith("--- sample 1\nthe module") and "tokens/s" not in captured.out


def test_a_skipped_checkpoint_is_a_log_line_shown_by_default(make_run, capsys):
    """A damaged newest checkpoint is named in one log line (not a Python UserWarning) with the step used instead:
    on stdout under the CLI, on stderr (Python's last-resort handler) for a library user who set up no logging."""
    from shareddiff.train import train

    run = train(make_run("train.max_steps=2", "checkpoint.every=1"), progress=False)
    (run.checkpoint / "model.safetensors").write_bytes(b"x")
    expected = (
        f"skipping damaged checkpoint {run.checkpoint}: model.safetensors has 1 bytes, the manifest says "
        f"{json.loads((run.checkpoint / 'manifest.json').read_text())['files']['model.safetensors']['bytes']}; "
        "using step_00000001 instead"
    )
    args = ["generate", str(run.run_dir), "--prompt", "the", "--max-new-tokens", "2", "--device", "cpu"]
    assert main(args) == 0
    assert expected in capsys.readouterr().out.splitlines()
    script = f"from shareddiff.train import latest_checkpoint; print(latest_checkpoint({str(run.run_dir)!r}).name)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert proc.returncode == 0 and proc.stdout == "step_00000001\n"
    assert proc.stderr.splitlines() == [expected]


def test_generate_compile_times_only_the_decode_after_its_warm_up(tiny_run, capsys, monkeypatch):
    """`generate --compile`: a greedy warm-up on the same StaticDecoder runs before the timer starts, its seconds
    reported on their own line; tokens/s counts the timed call alone. A fake clock that each generation advances
    (warm-up: 100 s of "compiling", the real call: 2 s) tells them apart."""
    import types

    import shareddiff.cli as cli
    import shareddiff.generation as generation
    from shareddiff.static_decode import StaticDecoder

    clock, calls = [0.0], []
    real = generation.generate

    def fake_generate(model, prompt, max_new_tokens, *args, decoder=None, **kwargs):
        calls.append((max_new_tokens, decoder, kwargs.get("temperature", args[0] if args else None), clock[0]))
        clock[0] += 100.0 if len(calls) == 1 else 2.0
        return real(model, prompt, max_new_tokens, *args, **kwargs)  # eager: no compile in a fast test

    monkeypatch.setattr(generation, "generate", fake_generate)
    monkeypatch.setattr(cli, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    args = ["generate", str(tiny_run.checkpoint), "--prompt", "the", "--max-new-tokens", "20", "--device", "cpu"]
    assert main([*args, "--temperature", "0", "--compile"]) == 0
    err = capsys.readouterr().err.splitlines()
    (warm_new, warm_decoder, warm_temperature, _), (timed_new, timed_decoder, _, timed_start) = calls
    assert warm_new == generation.WARMUP_TOKENS == 3 and warm_temperature == 0 and timed_new == 20
    assert isinstance(warm_decoder, StaticDecoder) and timed_decoder is warm_decoder  # the compiled step is reused
    assert timed_start == 100.0  # the timed call began after the warm-up
    assert err[-2] == "compile and warm-up: 100.00 s (prefill and 2 decode steps; not in the tokens/s below)"
    count = int(err[-1].split()[0])
    assert err[-1] == f"{count} new token{'' if count == 1 else 's'} in 2.00 s: {count / 2:,.1f} tokens/s"
    calls.clear()
    assert main(args) == 0  # eager: no warm-up, no compile line
    assert len(calls) == 1 and calls[0][1] is None
    assert "compile and warm-up" not in capsys.readouterr().err


def test_exported_weights_are_readable_by_others(tiny_run, tmp_path):
    out = tmp_path / "w.safetensors"
    old = os.umask(0o022)
    try:
        assert main(["export", str(tiny_run.checkpoint), "--to", "safetensors", str(out)]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert stat.S_IMODE((tiny_run.checkpoint / "model.safetensors").stat().st_mode) == 0o644


@pytest.mark.parametrize(
    ("out", "written", "into"),
    [
        ("new/dir/w.safetensors", "new/dir/w.safetensors", False),  # missing parents are made
        ("hf", "hf/model.safetensors", True),  # an existing folder: the weights go inside it
        ("fresh/", "fresh/model.safetensors", True),  # a folder by its trailing slash
    ],
)
def test_safetensors_export_makes_parents_and_writes_into_a_folder(tiny_run, tmp_path, capsys, out, written, into):
    (tmp_path / "hf").mkdir()
    target = str(tmp_path / out) + ("/" if out.endswith("/") else "")
    assert main(["export", str(tiny_run.checkpoint), "--to", "safetensors", target]) == 0
    line = capsys.readouterr().out
    assert line.startswith(f"wrote {tmp_path / written} from {tiny_run.checkpoint}")
    assert ("its model.safetensors" in line) == into
    weights = load_file(tmp_path / written)
    saved = load_file(tiny_run.checkpoint / "model.safetensors")
    assert weights.keys() == saved.keys() and all(torch.equal(weights[k], v) for k, v in saved.items())


def test_export_overwrites_a_file_only_with_force(tiny_run, tmp_path, capsys):
    out = tmp_path / "w.safetensors"
    out.write_text("precious")
    assert main(["export", str(tiny_run.checkpoint), str(out)]) == 2
    assert (
        capsys.readouterr().err == f"error: {out} already exists; pass --force to overwrite it, or give another path\n"
    )
    assert out.read_text() == "precious"
    assert main(["export", str(tiny_run.checkpoint), str(out), "--force"]) == 0
    assert load_file(out).keys() == load_file(tiny_run.checkpoint / "model.safetensors").keys()


@pytest.mark.parametrize(
    ("to", "where"),
    [
        ("safetensors", "step/model.safetensors"),  # the checkpoint's own weights
        ("safetensors", "step/"),  # the same, as a folder
        ("safetensors", "checkpoints/w.safetensors"),
        ("hf", "checkpoints/hf"),
        ("diffllama", "step/dl"),
    ],
)
def test_export_never_writes_into_a_runs_checkpoints(tiny_run, capsys, to, where):
    """Even with --force: the export would replace a checkpoint's files (or sit among them) and damage it."""
    step = tiny_run.checkpoint
    before = {p: p.read_bytes() for p in step.rglob("*") if p.is_file()}
    folder, _, rest = where.partition("/")
    out = f"{step if folder == 'step' else step.parent}/{rest}"
    assert main(["export", str(tiny_run.run_dir), out, "--to", to, "--force"]) == 2
    err = capsys.readouterr().err
    example = tiny_run.run_dir.resolve() / ("model.safetensors" if to == "safetensors" else f"model-{to}")
    assert f"is inside {step.parent.resolve()} (a run's checkpoints folder): an export there would damage" in err
    assert err.endswith(f"; write it outside, e.g. {example}\n") and err.count("\n") == 1
    assert {p: p.read_bytes() for p in step.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in step.parent.iterdir()) == [step.name]


@pytest.mark.parametrize("target", ["run", "step folder"])
def test_a_checkpoint_copied_in_from_another_run_is_refused(tiny_run, make_run, tmp_path, capsys, target):
    """A step folder of a wider model copied into the run's checkpoints/ (as its newest) is named, not used."""
    import shutil

    from shareddiff.train import train

    other = train(make_run("train.max_steps=3", "checkpoint.every=3", "model.n_layers=1", out="other"), progress=False)
    copied = tiny_run.checkpoint.parent / other.checkpoint.name  # step_00000003: newer than the run's step 2
    shutil.copytree(other.checkpoint, copied)
    path = str(tiny_run.run_dir if target == "run" else copied)
    for verb in (["generate", path, "--prompt", "the", "--device", "cpu"], ["export", path, str(tmp_path / "w")]):
        assert main(verb) == 2
        err = capsys.readouterr().err
        assert f"checkpoint {copied} does not belong to the run {tiny_run.run_dir}: its model config differs" in err
        assert "model.n_layers: checkpoint 1, run " in err and "copied in from another run" in err
    shutil.rmtree(copied)
    assert main(["export", str(tiny_run.run_dir), str(tmp_path / "w.safetensors")]) == 0  # its own checkpoint


@pytest.mark.slow
def test_hf_export_weights_are_readable_by_others(tiny_run, tmp_path):
    pytest.importorskip("transformers")
    old = os.umask(0o022)
    try:
        assert main(["export", str(tiny_run.checkpoint), "--to", "hf", str(tmp_path / "hf")]) == 0
    finally:
        os.umask(old)
    weights = list((tmp_path / "hf").glob("*.safetensors"))
    assert weights and all(stat.S_IMODE(w.stat().st_mode) == 0o644 for w in weights)


@pytest.mark.parametrize(
    ("missing", "verb", "message"),
    [
        ("transformers", ["export", "RUN", "--to", "hf", "OUT"], "exporting to Hugging Face needs the [hf] extra"),
        ("transformers", ["export", "RUN", "--to", "diffllama", "OUT"], "exporting to DiffLlama needs the [hf] extra"),
        ("transformers", ["eval", "harness", "RUN", "--tasks", "t"], "the harness needs the [hf] extra"),
        ("lm_eval", ["eval", "harness", "RUN", "--tasks", "t"], "the harness needs the [hf] extra"),
    ],
)
def test_a_missing_optional_package_names_the_extra_that_installs_it(
    tmp_path, monkeypatch, capsys, missing, verb, message
):
    """Without transformers or lm-eval, the [hf] commands say which extra to install, in one line."""
    if missing == "transformers":  # shareddiff.hf imported again, against the missing package (failing before it
        for name in [n for n in sys.modules if n == "shareddiff.hf" or n.startswith("shareddiff.hf.")]:  # registers
            monkeypatch.delitem(sys.modules, name)  # anything with the Auto classes)
    monkeypatch.setitem(sys.modules, missing, None)  # `import missing` raises ModuleNotFoundError
    for variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):  # the harness sets them for local tasks
        monkeypatch.setenv(variable, "1")
    args = [str(tmp_path / "run") if a == "RUN" else str(tmp_path / "out") if a == "OUT" else a for a in verb]
    assert main(args) == 2
    err = capsys.readouterr().err  # after the harness's online/offline note, when it gets that far
    package = "lm-eval" if missing == "lm_eval" else missing
    assert err.splitlines()[-1] == f"error: {message}: pip install 'shareddiff[hf]' ({package} is not installed)"
    assert "Traceback" not in err


def test_params_explains_the_size_in_the_name(capsys):
    assert main(["params", "shared_diff-830m"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^total +952,261,632 \(952.26M\)$", out, re.MULTILINE)
    assert (
        "size label: '830m' names the size row, it is not a count; this configuration has 952.26M in total, "
        "798.22M with tied embeddings, 644.18M without embeddings; the closest to the label is with tied "
        "embeddings (-3.8%)"
    ) in out
    assert main(["params", "shared_diff-tiny"]) == 0
    assert "size label" not in capsys.readouterr().out


def test_a_closed_pipe_ends_quietly():
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader (`head`) has gone before anything is written
    proc = subprocess.run(
        [sys.executable, "-m", "shareddiff.cli", "params", "shared_diff-830m"],
        stdout=write_end,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    os.close(write_end)
    assert proc.returncode == 141 and proc.stderr == ""


@pytest.mark.slow
def test_generate_compile_gives_the_eager_tokens(tmp_path, capsys):
    """`generate --compile` (a compiled StaticDecoder, inductor) prints the greedy text of the eager KV-cache path."""
    from shareddiff import ModelConfig, build_model
    from shareddiff.data.tokenizer import BUNDLED_TOKENIZERS
    from shareddiff.train import save_checkpoint

    model = build_model(ModelConfig.from_preset("diff-tiny", vocab_size=4096))
    state = {"model_config": model.config.to_dict()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    save_checkpoint(tmp_path, 1, model, optimizer, state, BUNDLED_TOKENIZERS["bundled-4k"], keep_last=1)
    args = ["generate", str(tmp_path), "--prompt", "def f(x):", "--max-new-tokens", "12", "--temperature", "0"]
    outs = []
    for extra in ([], ["--compile"]):
        assert main([*args, "--device", "cpu", *extra]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1] and outs[0].startswith("--- sample 1\ndef f(x):")


def _diff_tiny_checkpoint(path):
    from shareddiff import ModelConfig, build_model
    from shareddiff.data.tokenizer import BUNDLED_TOKENIZERS
    from shareddiff.train import save_checkpoint

    model = build_model(ModelConfig.from_preset("diff-tiny", vocab_size=4096))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    state = {"model_config": model.config.to_dict()}
    save_checkpoint(path, 1, model, optimizer, state, BUNDLED_TOKENIZERS["bundled-4k"], keep_last=1)


def test_generate_off_a_gpu_decodes_step_by_step_whatever_the_cuda_graph_switch(tmp_path, capsys):
    """The CUDA-graph step is the default on a GPU only: on the CPU `generate` prints the same greedy text with the
    switch on (the default) and off, and mentions no capture."""
    _diff_tiny_checkpoint(tmp_path)
    args = ["generate", str(tmp_path), "--prompt", "def f(x):", "--max-new-tokens", "6", "--temperature", "0"]
    outs = []
    for flags in ([], ["--no-cuda-graph"]):
        assert main([*args, "--device", "cpu", *flags]) == 0
        captured = capsys.readouterr()
        assert "CUDA-graph capture" not in captured.err
        outs.append(captured.out)
    assert outs[0] == outs[1] and outs[0].startswith("--- sample 1\ndef f(x):")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal of a CUDA device on a machine without one")
def test_generate_device_cuda_off_a_gpu_names_the_flag(tmp_path, capsys):
    """`generate --device cuda` on a machine without CUDA names the flag it came from, not train.device."""
    _diff_tiny_checkpoint(tmp_path)
    assert main(["generate", str(tmp_path), "--prompt", "x", "--device", "cuda", "--compile"]) == 2
    err = capsys.readouterr().err
    assert "--device cuda but no CUDA device is available; use --device cpu" in err and "train.device" not in err


@pytest.mark.parametrize(
    ("verb", "option"),
    [
        (["generate", "RUN", "--prompt", "def ", "--device", "tpu"], "--device tpu"),
        (["eval", "lm", "RUN", "--device", "tpu"], "--device tpu"),
        (["eval", "needle", "RUN", "--device", "tpu"], "--device tpu"),
        (["eval", "harness", "RUN", "--tasks", "t", "--device", "tpu"], "--device tpu"),
        (["train", "--preset", "shared_diff-tiny", "train.device=tpu", "train.out_dir=OUT"], "train.device=tpu"),
    ],
)
def test_an_unknown_device_names_the_accepted_ones(tmp_path, capsys, verb, option):
    """A device name torch cannot read is one line naming the option and the forms it takes, for every command."""
    args = [a.replace("RUN", str(tmp_path / "run")).replace("OUT", str(tmp_path / "out")) for a in verb]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == (
        f"error: {option} is not a device; use auto (CUDA when available, else the CPU), cpu, cuda, cuda:N "
        "(the GPU numbered N) or mps"
    )
    assert "Traceback" not in err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("extra", [[], ["--compile"]], ids=["graph", "compiled-graph"])
def test_generate_cuda_graph_gives_the_eager_tokens(tmp_path, capsys, extra, request):
    """`generate` on a GPU (the static step replayed as one CUDA graph, the default, compiled or not) prints the
    greedy text of the eager KV-cache path (`--no-cuda-graph`), in float32."""
    if "--compile" in extra and in_subprocess_without_triton_interpreter(request):
        return  # inductor's CUDA kernels compiled and the test passed in a process without Triton's interpreter
    _diff_tiny_checkpoint(tmp_path)
    args = ["generate", str(tmp_path), "--prompt", "def f(x):", "--max-new-tokens", "12", "--temperature", "0"]
    outs = []
    errs = []
    for flags in (["--no-cuda-graph"], extra):
        assert main([*args, "--device", "cuda", *flags]) == 0
        captured = capsys.readouterr()
        outs.append(captured.out)
        errs.append(captured.err)
    assert outs[0] == outs[1] and outs[0].startswith("--- sample 1\ndef f(x):")
    assert "warm-up" not in errs[0]
    assert ("compile and warm-up" if extra else "CUDA-graph capture and warm-up") in errs[1]


def test_the_cuda_graph_step_is_left_out_where_it_cannot_run():
    """`generate` falls back to step-by-step decoding, naming why, off a GPU and for the triton backend."""
    from shareddiff import ModelConfig, build_model
    from shareddiff.cli import _no_cuda_graph_reason

    model = build_model(ModelConfig.from_preset("diff-tiny"))
    assert _no_cuda_graph_reason(model, torch.device("cuda")) is None
    assert "CUDA graphs need a GPU" in _no_cuda_graph_reason(model, torch.device("cpu"))
    model.layers[1].attention.backend = "triton"
    assert "attention backend is 'triton'" in _no_cuda_graph_reason(model, torch.device("cuda"))


@pytest.mark.parametrize("verb", [[], ["train"], ["generate"], ["eval"], ["eval", "needle"], ["reproduce"]])
def test_help_does_not_import_torch(verb):
    """`shareddiff [VERB] --help` reads the command table without loading torch (seconds otherwise)."""
    script = (
        "import sys\nfrom shareddiff.cli import main\ntry:\n"
        f"    main({[*verb, '--help']!r})\nexcept SystemExit as exit:\n    assert exit.code == 0, exit.code\n"
        "print('torch' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: shareddiff {' '.join(verb)}".rstrip())
    assert proc.stdout.splitlines()[-1] == "False"


def test_options_come_from_the_command_functions():
    from shareddiff.cli import build_parser, cmd_generate, cmd_reproduce

    parser = build_parser()
    args = vars(parser.parse_args(["generate", "ckpt", "--prompt", "x", "--top-k", "3"]))
    assert args.pop("func") is cmd_generate and args.pop("verb") == "generate"
    assert args == {
        "checkpoint": "ckpt",
        "prompt": "x",
        "max_new_tokens": 100,
        "temperature": 0.8,
        "top_k": 3,
        "top_p": 0.95,
        "num_samples": 1,
        "seed": 0,
        "device": "auto",
        "compile": False,
        "cuda_graph": True,
    }
    args = vars(parser.parse_args(["reproduce", "exp", "--run", "a", "--run", "b", "--list", "--no-summary"]))
    assert args["func"] is cmd_reproduce and args["runs"] == ["a", "b"] and args["list_only"] and not args["summary"]
    needle = vars(parser.parse_args(["eval", "needle", "run", "--depths", "0.5", "1"]))
    assert needle["depths"] == [0.5, 1.0] and needle["samples"] == 50 and needle["lengths"] is None
    help_text = parser._subparsers._group_actions[0].choices["train"].format_help()
    assert "--new-schedule" in help_text and "accept a changed learning-rate schedule" in help_text
    with pytest.raises(SystemExit):
        parser.parse_args(["export", "ckpt", "out", "--to", "onnx"])  # the Literal's choices


def test_every_no_switch_reads_as_what_it_turns_off():
    """A --no-NAME switch's help is "no " and the docstring's thing it turns off: a noun phrase, not a sentence."""
    from shareddiff.cli import build_parser

    parser = build_parser()
    verbs = parser._subparsers._group_actions[0].choices
    switches = {
        (verb, o): action.help
        for verb, sub in verbs.items()
        for action in sub._actions
        for o in action.option_strings
        if o.startswith("--no-")
    }
    assert switches[("generate", "--no-cuda-graph")].startswith(
        "no CUDA-graph decoding: decode step by step from Python (the reference path, ~10x slower at batch 1) "
        "instead of the default on a GPU, fixed shapes with each step replayed as one captured CUDA graph"
    )
    assert switches[("train", "--no-progress")] == "no progress bar"
    assert not [s for s, text in switches.items() if re.match(r"no (on|a|an|the|decode|with|do|use)\b", text)]


def test_overrides_mix_with_options_in_any_order():
    from shareddiff.cli import take_overrides

    argv = ["reproduce", "a.b=1", "exp", "--out", "o", "--c.d", "2", "--no-progress", "--e.f=3", "g.h=x=y"]
    assert take_overrides(argv) == (
        ["reproduce", "exp", "--out", "o", "--no-progress"],
        ["a.b=1", "c.d=2", "e.f=3", "g.h=x=y"],
    )
    with pytest.raises(ValueError, match=r"--c\.d needs a value"):
        take_overrides(["train", "--c.d"])
    assert main(["train", "--train.max_steps"]) == 2  # a usage error, like argparse's


def test_version_prints_the_installed_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"shareddiff {version('shareddiff')}\n"


def test_version_falls_back_to_the_package_version_when_not_installed(monkeypatch, capsys):
    """Run from a source tree (PYTHONPATH=src) with no installed distribution: the package's __version__."""
    import importlib.metadata

    import shareddiff

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    monkeypatch.setattr(shareddiff, "__version__", "9.8.7")
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == "shareddiff 9.8.7\n"
