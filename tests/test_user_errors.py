"""Every entry point keeps the exit contract (README "Exit status", pretrain/errors.py) on bad
input: status 2 (a flag or config), 3 (data) or 4 (a checkpoint or model directory), one paragraph
that names the file or flag, and no traceback.

The table below holds the bad inputs of each tool. Every tool (a module under scripts/ with a
`__main__` guard, launch.slurm, pretrain.train) must have rows: a new tool without any fails
`test_every_tool_is_in_the_table`, so none can skip the contract. The rows run in one child process
(tests/tool_runner.py: as `python -m X` would, without an interpreter start per row); the trainer's
rows run as real processes (Hydra keeps global state between runs in one process).
"""

import json
import os
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass

import pytest

from tests.fixtures import (REPO, SMALL, exported, model_and_config, run_trainer, small_data,
                            small_prepared, subprocess_env, write_checkpoint)

TRACEBACK = "Traceback (most recent call last)"


@dataclass(frozen=True)
class Row:
    id: str
    program: str          # a module, as `python -m program`
    args: tuple           # {name} stands for a path that `bad_inputs` made
    status: int
    names: str            # what the message must name (a file, a flag, a key)


def _samples_row(id, text_name, *extra, status=3, names=None):
    return Row(id, "scripts.evaluate", ("--samples", "{%s}" % text_name, "--out", "{fresh}/%s" % id,
                                        "--no-progress", *extra), status, names or text_name)


ROWS = [
    # -- evaluate: the samples file, and flags that cannot work -------------------------------------
    _samples_row("evaluate-malformed-line", "samples_malformed", names="line 2"),
    _samples_row("evaluate-unknown-task", "samples_unknown_task", names="HumanEval/9999"),
    _samples_row("evaluate-raw-nul", "samples_nul"),
    _samples_row("evaluate-empty-file", "samples_empty"),
    _samples_row("evaluate-workers-0", "samples_good", "--workers", "0", status=2, names="--workers"),
    _samples_row("evaluate-timeout-0", "samples_good", "--timeout", "0", status=2, names="--timeout"),
    _samples_row("evaluate-limit-0", "samples_good", "--limit", "0", status=2, names="--limit"),
    _samples_row("evaluate-memory-1", "samples_good", "--memory-mb", "1", status=2,
                 names="--memory-mb"),
    _samples_row("evaluate-subset-of-problems", "samples_good", "--limit", "3",
                 names="2 of the first 3"),
    Row("evaluate-empty-out", "scripts.evaluate",
        ("--samples", "{samples_good}", "--limit", "1", "--out", ""), 2, "--out is empty"),
    Row("evaluate-greedy-twice", "scripts.evaluate",
        ("--checkpoint", "{checkpoint}", "--samples-per-task", "2", "--out", "{fresh}/greedy"), 2,
        "--temperature"),
    Row("evaluate-past-positions", "scripts.evaluate",
        ("--checkpoint", "{checkpoint}", "--max-new-tokens", "600", "--limit", "1", "--out",
         "{fresh}/past", "--no-progress"), 2, "max_position_embeddings=512"),
    Row("evaluate-out-is-input", "scripts.evaluate",
        ("--samples", "{samples_in_out}/samples.jsonl", "--out", "{samples_in_out}", "--limit", "1",
         "--no-progress"), 2, "--out"),
    # -- import_hf: damaged Hugging Face directories ------------------------------------------------
    Row("import-truncated-shard", "scripts.import_hf", ("--hf", "{hf_truncated}", "--out", "{fresh}/a"),
        4, "model-00001-of-00001.safetensors"),
    Row("import-header-claims-more", "scripts.import_hf",
        ("--hf", "{hf_header_claims_more}", "--out", "{fresh}/b"), 4, "model-00001-of-00001.safetensors"),
    Row("import-garbage-header", "scripts.import_hf",
        ("--hf", "{hf_garbage_header}", "--out", "{fresh}/c"), 4, "model-00001-of-00001.safetensors"),
    Row("import-config-not-object", "scripts.import_hf",
        ("--hf", "{hf_config_list}", "--out", "{fresh}/d"), 4, "config.json"),
    Row("import-config-not-json", "scripts.import_hf",
        ("--hf", "{hf_config_garbage}", "--out", "{fresh}/e"), 4, "config.json"),
    Row("import-tokenizer-json-garbage", "scripts.import_hf",
        ("--hf", "{hf_tokenizer_json_garbage}", "--out", "{fresh}/f"), 4, "tokenizer.json"),
    Row("import-tokenizer-model-garbage", "scripts.import_hf",
        ("--hf", "{hf_tokenizer_model_garbage}", "--out", "{fresh}/g"), 4, "tokenizer.model"),
    Row("import-missing-dir", "scripts.import_hf", ("--hf", "{fresh}/nothing", "--out", "{fresh}/h"),
        2, "nothing"),
    # -- checkpoint tools ---------------------------------------------------------------------------
    Row("convert-into-itself", "scripts.convert_checkpoint", ("{checkpoint}", "{checkpoint}"), 2,
        "checkpoint"),
    Row("convert-missing", "scripts.convert_checkpoint", ("{fresh}/none", "{fresh}/conv"), 2, "none"),
    Row("convert-to-its-own-engine", "scripts.convert_checkpoint",
        ("{checkpoint}", "{fresh}/same", "--to", "megatron"), 2, "engine=megatron already"),
    Row("convert-to-no-engine", "scripts.convert_checkpoint",
        ("{checkpoint}", "{fresh}/none", "--to", "fsdp"), 2, "--to"),
    Row("generate-damaged-unsealed", "scripts.generate",
        ("--checkpoint", "{checkpoint_unsealed_damaged}", "--prompt", "x"), 4, "iter_"),
    Row("diagnose-missing", "scripts.diagnose", ("{fresh}/none",), 2, "none"),
    *[Row(f"diagnose{flag}-{value}", "scripts.diagnose", ("{checkpoint}", "--random-tokens", flag,
                                                         value), 2, flag)
      for flag, value in (("--seq-length", "100000"), ("--seq-length", "513"),
                          ("--seq-length", "1"), ("--batch", "0"), ("--batch", "100000"),
                          ("--attention-queries", "-1"), ("--seed", "-1"))],
    Row("diagnose-queries-past-sequence", "scripts.diagnose",
        ("{checkpoint}", "--random-tokens", "--seq-length", "64", "--attention-queries", "65"), 2,
        "--attention-queries 65"),
    *[Row(f"generate{flag}-{value}", "scripts.generate",
          ("--checkpoint", "{checkpoint}", "--prompt", "x", flag, value), 2, flag)
      for flag, value in (("--temperature", "nan"), ("--temperature", "-1"),
                          ("--temperature", "inf"), ("--top-p", "0"), ("--top-p", "2"),
                          ("--top-p", "nan"), ("--seed", "-1"), ("--max-new-tokens", "0"))],
    Row("generate-past-positions", "scripts.generate",
        ("--checkpoint", "{checkpoint}", "--prompt", "x", "--max-new-tokens", "600"), 2,
        "max_position_embeddings=512"),
    Row("generate-far-past-positions", "scripts.generate",
        ("--checkpoint", "{checkpoint}", "--prompt", "x", "--max-new-tokens", "100000"), 2,
        "--max-new-tokens 100000"),
    *[Row(f"export{flag}-{value}", "scripts.export_hf",
          ("--checkpoint", "{checkpoint}", "--out", "{fresh}/shard", flag, value), 2, flag)
      for flag, value in (("--max-shard-size", "0"), ("--max-shard-size", "abc"),
                          ("--max-shard-size", "-5GB"), ("--iteration", "-1"))],
    Row("export-missing", "scripts.export_hf", ("--checkpoint", "{fresh}/none", "--out", "{fresh}/x"),
        2, "none"),
    # -- corpora -------------------------------------------------------------------------------------
    Row("process-only-binary", "scripts.process_corpus",
        ("--input", "{binary_folder}", "--tokenizer", "{tokenizer}", "--output", "{fresh}/bin/out"), 3,
        "binary_folder"),
    Row("process-symlink-loop", "scripts.process_corpus",
        ("--input", "{loop_folder}", "--tokenizer", "{tokenizer}", "--output", "{fresh}/loop/out"), 3,
        "loop_folder"),
    Row("preprocess-missing-corpus", "scripts.preprocess",
        ("--corpus", "{fresh}/none.jsonl", "--tokenizer", "{tokenizer}", "--output", "{fresh}/pre"),
        2, "none.jsonl"),
    Row("preprocess-empty-output", "scripts.preprocess",
        ("--corpus", "{corpus_json}", "--tokenizer", "{tokenizer}", "--output", ""), 2, "--output"),
    Row("preprocess-output-over-input", "scripts.preprocess",
        ("--corpus", "{corpus_json}", "--tokenizer", "{tokenizer}", "--output", "{corpus_prefix}"),
        2, "which is an input"),
    Row("process-empty-output", "scripts.process_corpus",
        ("--input", "{corpus_json}", "--tokenizer", "{tokenizer}", "--output", " "), 2, "--output"),
    Row("tokenizer-missing-corpus", "scripts.train_tokenizer",
        ("--corpus", "{fresh}/none.jsonl", "--output", "{fresh}/tok.model"), 2, "none.jsonl"),
    *[Row(f"tokenizer{flag}-{value}", "scripts.train_tokenizer",
          ("--corpus", "{samples_good}", "--output", "{fresh}/tok.model", flag, value), 2, flag)
      for flag, value in (("--vocab-size", "0"), ("--vocab-size", "262"), ("--threads", "0"),
                          ("--max-sentences", "0"), ("--max-sentences", "-1"),
                          ("--max-files", "-1"), ("--output", "{fresh}"),
                          ("--output", "{fresh}/tok.txt"))],
    Row("tokenizer-vocab-beyond-corpus", "scripts.train_tokenizer",
        ("--corpus", "{samples_good}", "--text-key", "completion", "--output", "{fresh}/big.model",
         "--vocab-size", "100000"), 2, "--vocab-size 100000"),
    Row("make-corpus-unknown-kind", "scripts.make_corpus",
        ("--corpus", "nosuchkind:train", "--output", "{fresh}/c.jsonl"), 3, "nosuchkind"),
    # -- runs and plans ------------------------------------------------------------------------------
    Row("plot-run-missing", "scripts.plot_run", ("{fresh}/no_run",), 2, "no_run"),
    Row("plot-sweep-missing", "scripts.plot_sweep", ("{fresh}/no_run",), 2, "no_run"),
    Row("loop-study-missing", "scripts.loop_study", ("report", "{fresh}/no_runs"), 2, "no_runs"),
    Row("loop-study-no-runs", "scripts.loop_study", ("report", "{binary_folder}"), 2,
        "holds no run folder"),
    Row("loop-study-out-in-a-run", "scripts.loop_study",
        ("report", "{study_runs}", "--out", "{study_runs}/cell/report"), 2, "--out"),
    Row("loop-study-no-runs-dir", "scripts.loop_study", ("report",), 2, "RUNS_DIR"),
    Row("plan-bad-value", "scripts.plan", ("model.num_loops=0", "--gpus", "8"), 2, "num_loops"),
    *[Row(f"plan{flag}-{value}", "scripts.plan", (flag, value), 2, flag)
      for flag, value in (("--loops", "a,b"), ("--loops", "0"), ("--loops", "1,,2"),
                          ("--utilization", "0"), ("--utilization", "2"), ("--utilization", "nan"),
                          ("--gpu-memory", "abc"), ("--gpu-memory", "0"), ("--gpu-memory", "80,-1"),
                          ("--gpus", "0"), ("--gpus", "-8"))],
    Row("dry-run-bad-world", "scripts.dry_run_layout", ("parallel.tp=2", "--world", "3"), 2, "3"),
    Row("slurm-unknown-key", "launch.slurm", ("submit", "model.no_such_key=1", "--dry-run"), 2,
        "no_such_key"),
    *[Row(f"slurm-cancel-{job}", "launch.slurm", ("cancel-followups", job), 2, job)
      for job in ("notanumber", "12;rm", "123_x", "-1")],
    # -- the trainer ---------------------------------------------------------------------------------
    Row("train-norm-epsilon", "pretrain.train", ("model.norm_epsilon=-1",), 2, "norm_epsilon"),
    Row("train-rotary-base", "pretrain.train", ("model.rotary_base=0",), 2, "rotary_base"),
    Row("train-flash-missing", "pretrain.train", ("model.attention_backend=flash",), 2,
        "attention_backend"),
    Row("train-resume-yaml-broken", "pretrain.train",
        ("--config-dir", "{broken_resume}", "--config-name", "resume"), 2, "resume.yaml"),
]


def tools() -> set:
    """Every entry point a user runs: scripts/ modules with a `__main__` guard, and the two
    entries of the other floors."""
    found = {"pretrain.train", "launch.slurm"}
    for name in sorted(os.listdir(os.path.join(REPO, "scripts"))):
        path = os.path.join(REPO, "scripts", name)
        if name.endswith(".py") and "__main__" in open(path).read():
            found.add("scripts." + name[:-3])
    return found


def test_every_tool_is_in_the_table():
    assert tools() - {row.program for row in ROWS} == set(), "add its bad inputs to ROWS"


# -- the bad inputs ------------------------------------------------------------------------------
def _hf_copy(good: str, root: str, name: str) -> str:
    path = os.path.join(root, name)
    shutil.copytree(good, path)
    return path


def _shard(folder: str) -> str:
    return os.path.join(folder, "model-00001-of-00001.safetensors")


def _rewrite_header(path: str, edit) -> None:
    with open(path, "rb") as stream:
        data = stream.read()
    length = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + length])
    edit(header)
    text = json.dumps(header).encode()
    with open(path, "wb") as stream:
        stream.write(struct.pack("<Q", len(text)) + text + data[8 + length:])


def _make_bad_inputs(root: str) -> dict:
    paths = {"fresh": os.path.join(root, "fresh"), "tokenizer": small_prepared().tokenizer_model}
    os.makedirs(paths["fresh"])
    model, model_cfg = model_and_config()
    hf_root = os.path.join(root, "export")
    os.makedirs(hf_root)
    from pathlib import Path

    good = exported(model, model_cfg, Path(hf_root))
    paths["checkpoint"] = os.path.join(hf_root, "checkpoint")
    assert os.path.exists(_shard(good)), os.listdir(good)

    def bad(name, damage):
        folder = _hf_copy(good, root, name)
        damage(folder)
        paths[name] = folder

    def truncate(folder):
        with open(_shard(folder), "r+b") as stream:
            stream.truncate(os.path.getsize(_shard(folder)) // 2)

    def claim_more(folder):
        def edit(header):
            name = next(k for k in header if k != "__metadata__")
            begin, _ = header[name]["data_offsets"]
            header[name]["data_offsets"] = [begin, begin + 10 ** 9]
        _rewrite_header(_shard(folder), edit)

    def garbage_header(folder):
        with open(_shard(folder), "r+b") as stream:
            stream.write(struct.pack("<Q", 64) + os.urandom(64))

    def write(name, content):
        def damage(folder):
            with open(os.path.join(folder, name), "wb") as stream:
                stream.write(content)
        return damage

    bad("hf_truncated", truncate)
    bad("hf_header_claims_more", claim_more)
    bad("hf_garbage_header", garbage_header)
    bad("hf_config_list", write("config.json", b"[1, 2, 3]"))
    bad("hf_config_garbage", write("config.json", b"\x89PNG not json"))
    bad("hf_tokenizer_json_garbage", write("tokenizer.json", b'{"version": "1.0", "model": 7}'))
    bad("hf_tokenizer_model_garbage", write("tokenizer.model", os.urandom(300)))

    # A checkpoint written before checksums existed (no checksums.json), its payload damaged.
    unsealed = os.path.join(root, "unsealed")
    write_checkpoint(model, model_cfg, unsealed)
    iteration = os.path.join(unsealed, open(os.path.join(unsealed, "latest")).read().strip())
    os.remove(os.path.join(iteration, "checksums.json"))
    for name in sorted(os.listdir(iteration)):
        path = os.path.join(iteration, name)
        if os.path.isfile(path) and name.endswith((".distcp", ".pt", ".safetensors")):
            with open(path, "r+b") as stream:
                stream.truncate(os.path.getsize(path) // 3)
    paths["checkpoint_unsealed_damaged"] = unsealed

    samples = {"samples_good": '{"task_id": "HumanEval/0", "completion": "    return False\\n"}\n',
               "samples_malformed": '{"task_id": "HumanEval/0", "completion": "x"}\n{"task_id": \n',
               "samples_unknown_task": '{"task_id": "HumanEval/9999", "completion": "x"}\n',
               "samples_nul": '{"task_id": "HumanEval/0", "completion": "x"}\x00\n',
               "samples_empty": ""}
    for name, text in samples.items():
        paths[name] = os.path.join(root, name + ".jsonl")
        with open(paths[name], "w") as stream:
            stream.write(text)
    rescored = os.path.join(root, "samples_in_out")
    os.makedirs(rescored)
    shutil.copyfile(paths["samples_good"], os.path.join(rescored, "samples.jsonl"))
    paths["samples_in_out"] = rescored

    binary = os.path.join(root, "binary_folder")
    os.makedirs(binary)
    for i in range(3):
        with open(os.path.join(binary, f"blob{i}.py"), "wb") as stream:
            stream.write(bytes(range(256)) * 8)
    paths["binary_folder"] = binary
    loop = os.path.join(root, "loop_folder")
    os.makedirs(loop)
    os.symlink(loop, os.path.join(loop, "again"))
    os.symlink(os.path.join(loop, "b"), os.path.join(loop, "a"))
    os.symlink(os.path.join(loop, "a"), os.path.join(loop, "b"))
    paths["loop_folder"] = loop

    corpus = os.path.join(root, "corpus", "e.json")  # a JSON array corpus whose name is P.json
    os.makedirs(os.path.dirname(corpus))
    with open(corpus, "w") as stream:
        json.dump([{"text": "def f():\n    return 1\n"}], stream)
    paths["corpus_json"], paths["corpus_prefix"] = corpus, corpus[:-len(".json")]

    broken = os.path.join(root, "broken_resume")
    os.makedirs(broken)
    with open(os.path.join(broken, "resume.yaml"), "w") as stream:
        stream.write("model:\n  num_loops: 2\n  clp: [unclosed\n")
    paths["broken_resume"] = broken
    study_cell = os.path.join(root, "study_runs", "cell")  # a run folder for scripts.loop_study
    os.makedirs(study_cell)
    with open(os.path.join(study_cell, "config.yaml"), "w") as stream:
        stream.write("model: {}\n")
    paths["study_runs"] = os.path.dirname(study_cell)
    return paths


@pytest.fixture(scope="module")
def bad_inputs(megatron_world, tmp_path_factory) -> dict:
    return _make_bad_inputs(str(tmp_path_factory.mktemp("bad")))


def _args(row: Row, paths: dict) -> list:
    return [arg.format(**paths) for arg in row.args]


@pytest.fixture(scope="module")
def results(bad_inputs) -> dict:
    jobs = [dict(id=row.id, module=row.program, args=_args(row, bad_inputs)) for row in ROWS
            if row.program != "pretrain.train"]
    done = subprocess.run([sys.executable, "-c", "from tests.tool_runner import child; child()"],
                          input=json.dumps(jobs), cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return {result["id"]: result for result in json.loads(done.stdout.splitlines()[-1])}


def _trainer_result(row: Row, paths: dict, tmp_path) -> dict:
    args = _args(row, paths)
    if "--config-dir" not in args:
        args = [*SMALL, *small_data(), "train.max_steps=3", *args]
    done = run_trainer(tmp_path / "run", *args, timeout=300)
    return dict(status=f"exit {done.returncode}", output=done.stdout + done.stderr)


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_bad_input_gets_its_status_and_one_paragraph(row, bad_inputs, request, tmp_path):
    if row.program == "pretrain.train":
        result = _trainer_result(row, bad_inputs, tmp_path)
    else:
        result = request.getfixturevalue("results")[row.id]
    output = result["output"]
    assert TRACEBACK not in output and not result["status"].startswith("raised"), output[-3000:]
    assert result["status"] == f"exit {row.status}", output[-3000:]
    message = [line for line in output.splitlines() if line.strip()][-1:]
    assert message and row.names.format(**bad_inputs) in output, output[-3000:]
