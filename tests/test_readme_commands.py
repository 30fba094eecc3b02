"""Every command in README.md's code blocks runs as written (issue 19).

The test reads the README each time it runs (tests/readme_reader.py): every code block, indented
or fenced, is a shell block (its lines start with python, torchrun, make, pip or bash), a Python
block (it parses as Python), or text (the layout tree). The commands run in the README's order, in one fresh folder that mirrors
the checkout (a symlink to each tracked top-level entry and to .venv), so the README's relative
paths resolve and everything a command writes lands in that folder. Each must exit 0 and write
what the README says it writes (EXPECT below).

The README's conventions (stated under "The two commands"):
- `<run>`: the name of a run folder under outputs/ that a training command wrote; here the first
  training command's run. `<LoopCoder-V2>`: a local copy of the published model's directory; here
  a small model with every function-changing value of model=plt_7b, exported by handoff/ in the
  published layout (nothing is downloaded).
- `[...]` is optional: the test runs the command without it.
- A trailing comment tagged `[GPU]` or `[cluster]` marks a command that needs that hardware; the
  test runs the comment's `dry run: CMD` instead (`dry run: add ARGS`: the command plus ARGS).
  `[test suite]` marks `make test`, which runs this test and is not run by it.

What the test adds to the commands is stated once, in size_args() and command_env(): the small
model and data of the tests (tests/fixtures.py), 2 steps, 4 sampled tokens, the tools' own size
flags. The end-of-run sample stays on: it is part of what a training command promises.
"""

import dataclasses
import glob
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import pytest
import yaml

from tests.fixtures import REPO, SMALL_MODEL, free_port, small_data, subprocess_env
from tests.readme_reader import (
    MARKER, PLACEHOLDER, Command, drop_optional, program_of, readme_commands)

README = os.path.join(REPO, "README.md")
TIMEOUT = 600  # seconds per command: a 4-process torchrun on a busy 2-core machine takes minutes


# -- what the test adds to the README's commands (the one place) --------------------------------------
def train_size(resume: bool) -> list:
    """The tests' small model and data, 2 steps (a resume goes 2 steps past its run), a 4-token
    sample, no wandb process."""
    return [*SMALL_MODEL, *small_data(), "train.seq_length=64", f"train.max_steps={4 if resume else 2}",
            "train.warmup_steps=1", "sample.max_new_tokens=4", "logging.wandb.mode=disabled"]


TOOL_SIZES = {
    "scripts.make_corpus": ["--max-files", "40"],
    "scripts.train_tokenizer": ["--vocab-size", "600"],
    "scripts.generate": ["--max-new-tokens", "4"],
    "scripts.diagnose": ["--batch", "1", "--seq-length", "32"],
    "scripts.evaluate": ["--limit", "2", "--samples-per-task", "2", "--max-new-tokens", "8",
                         "--batch-size", "2", "--workers", "1"],
}


def size_args(program: str, args: list) -> list:
    if program == "pretrain.train":
        return train_size(resume="resume" in args)
    if program == "make train":
        # make's setup step is what `make test` itself ran before this test: run the train recipe.
        return [f"ARGS={' '.join(train_size(resume=False))}", "-o", ".venv/.installed"]
    return TOOL_SIZES.get(program, [])


def command_env() -> dict:
    """tests/fixtures.py's (one torch thread, no wandb), the venv's programs first on PATH, a free
    port for torchrun (PET_MASTER_PORT is its --master-port), pip offline (no test reaches the
    network; the GPU install's dry run reads only this checkout)."""
    path = f"{os.path.dirname(sys.executable)}:{os.environ.get('PATH', '')}"
    return subprocess_env(PATH=path, PET_MASTER_PORT=str(free_port()), PIP_NO_INDEX="1",
                          PIP_NO_BUILD_ISOLATION="0")


COMMANDS = readme_commands(open(README).read())
RUNNABLE = [i for i, command in enumerate(COMMANDS) if MARKER.search(command.comment) is None
            or MARKER.search(command.comment).group(1) != "test suite"]


# -- running them --------------------------------------------------------------------------------
@dataclasses.dataclass
class Outcome:
    command: Command
    ran: str                 # the command line that ran
    program: str
    args: list               # the program's arguments, the appended sizes included
    result: subprocess.CompletedProcess
    root: str
    start: float
    runs: list               # run folders whose resume.yaml this command wrote

    @property
    def output(self) -> str:
        return self.result.stdout + self.result.stderr

    def report(self) -> str:
        return (f"README.md:{self.command.line}: {self.command.code}\nran: {self.ran}\n"
                f"exit {self.result.returncode}; output (end):\n{self.output[-4000:]}")

    def wrote(self, *paths) -> None:
        for path in paths:
            full = os.path.join(self.root, path)
            assert os.path.isfile(full) and os.path.getsize(full) > 0, (
                f"{path} was not written\n{self.report()}")
            assert os.path.getmtime(full) >= self.start - 1, f"{path} is older than the command"

    def wrote_checkpoint(self, folder: str) -> None:
        self.wrote(os.path.join(folder, "latest"))
        latest = open(os.path.join(self.root, folder, "latest")).read().strip()
        assert os.path.isdir(os.path.join(self.root, folder, latest)), self.report()


class Readme:
    """The README's commands, run in order (each at most once) in one mirror of the checkout."""

    def __init__(self, root: str, request):
        self.root, self.request, self.outcomes, self.published = root, request, {}, None
        tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                                 check=True).stdout.split()
        for name in sorted({path.split("/")[0] for path in tracked} | {".venv"}):
            os.symlink(os.path.join(REPO, name), os.path.join(root, name))

    def outcome(self, index: int) -> Outcome:
        """Command `index`'s outcome, running the commands before it first (their outputs are
        its inputs)."""
        for i in range(index + 1):
            if i not in self.outcomes:
                self.outcomes[i] = self._run(COMMANDS[i])
        return self.outcomes[index]

    def _run(self, command: Command) -> Optional[Outcome]:
        form = command.run_form()
        if form is None:
            return None
        if command.kind == "python":
            line, program, args = f"python -c {shlex.quote(form)}", "python code", []
        else:
            line = PLACEHOLDER.sub(self._placeholder, drop_optional(form))
            program, args = program_of(shlex.split(line))
            line += "".join(f" {shlex.quote(arg)}" for arg in size_args(program, args))
            program, args = program_of(shlex.split(line))
        start = time.time()
        result = subprocess.run(["bash", "-c", line], cwd=self.root, env=command_env(),
                                stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                timeout=TIMEOUT)
        return Outcome(command, line, program, args, result, self.root, start,
                       self._runs_since(start))

    def _runs_since(self, start: float) -> list:
        found = []
        for folder, _, names in os.walk(self.root):  # symlinks (the checkout) are not entered
            if "resume.yaml" in names and os.path.getmtime(f"{folder}/resume.yaml") >= start - 1:
                found.append(folder)
        return sorted(found)

    def _placeholder(self, match) -> str:
        if match.group(1) == "run":
            return os.path.relpath(self._first_run(), os.path.join(self.root, "outputs"))
        if match.group(1) == "LoopCoder-V2":
            if self.published is None:
                self.request.getfixturevalue("megatron_world")
                self.published = published_stand_in(Path(self.root) / "published")
            return os.path.relpath(self.published, self.root)
        raise AssertionError(f"README placeholder {match.group(0)} is unknown: use <run> or "
                             f"<LoopCoder-V2> (tests/test_readme_commands.py)")

    def _first_run(self) -> str:
        runs = [run for outcome in self.outcomes.values() if outcome for run in outcome.runs]
        assert runs, "<run> needs a run folder, and no training command before it wrote one"
        return runs[0]


def published_stand_in(folder: Path) -> str:
    """A small model in the published LoopCoder-V2 layout with plt_7b's function-changing values
    (the shape is the tests' small one, as the size overrides make the trainer's)."""
    from tests.fixtures import exported, model_and_config

    fields = yaml.safe_load(open(os.path.join(REPO, "conf", "model", "plt_7b.yaml")))
    fields.update({key.split("=")[0][len("model."):]: yaml.safe_load(key.split("=")[1])
                   for key in SMALL_MODEL})
    model, model_cfg = model_and_config(**fields)
    return exported(model, model_cfg, folder)


# -- what each program writes (the README's own statements) -----------------------------------------
def option(args: list, name: str, default=None):
    values = [args[i + 1] for i, arg in enumerate(args[:-1]) if arg == name]
    return values[-1] if values else default


def positionals(args: list) -> list:
    """Arguments that are not options or option values (the tools' positionals come first)."""
    found, i = [], 0
    while i < len(args):
        if args[i].startswith("-"):
            i += 2 if i + 1 < len(args) and not args[i + 1].startswith("-") else 1
            continue
        found.append(args[i])
        i += 1
    return found


def training_runs(outcome: Outcome) -> None:
    """Each run folder: config.yaml holding the command's values, resume.yaml, metrics.jsonl up to
    train.max_steps, the checkpoint of that step named by `latest`; then the end-of-run sample (or,
    pipeline-split, its one skip line); a sweep writes one folder per job."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import DictConfig, ListConfig, OmegaConf

    multirun = "-m" in outcome.args or "--multirun" in outcome.args
    overrides = OverridesParser.create().parse_overrides(
        [arg for arg in outcome.args if "=" in arg and not arg.startswith("-")])
    expected = sweep_jobs(overrides) if multirun else 1
    assert len(outcome.runs) == expected, f"{outcome.runs}: expected {expected}\n{outcome.report()}"
    pipeline_split = 0
    for run in outcome.runs:
        config = OmegaConf.load(os.path.join(run, "config.yaml"))
        for override in overrides if not multirun else ():
            found = OmegaConf.select(config, override.key_or_group, default="<absent>")
            if override.is_delete() or found == "<absent>" or isinstance(found, DictConfig):
                continue  # a config group (model=plt_7b) or a key the schema does not hold
            found = OmegaConf.to_container(found) if isinstance(found, ListConfig) else found
            assert found == override.value(), f"{run}/config.yaml: {override.key_or_group}={found!r}"
        steps = [row["step"] for row in map(json.loads, open(os.path.join(run, "metrics.jsonl")))
                 if "loop" not in row]
        assert steps and steps[-1] == config.train.max_steps, f"{run}: steps {steps}"
        outcome.wrote(os.path.relpath(os.path.join(run, "resume.yaml"), outcome.root))
        latest = os.path.join(config.checkpoint.dir, "latest")
        assert open(latest).read().strip().endswith(f"{config.train.max_steps:07d}"), latest
        pipeline_split += config.parallel.pp > 1
    samples = len(re.findall(r"\bsample \(\d+ new tokens", outcome.output))
    assert samples == len(outcome.runs) - pipeline_split, outcome.report()
    assert outcome.output.count("no end-of-run sample: decoding needs the whole model") == \
        pipeline_split, outcome.report()
    for key, line in (("checkpoint.init_from", "initialised the weights from"),
                      ("--config-name", "resumed from")):
        if any(arg.startswith(key) for arg in outcome.args):
            assert line in outcome.output, outcome.report()


def sweep_jobs(overrides: list) -> int:
    """Jobs of a -m command: the product of its sweeps' lengths, including the sweeper params of
    a config group it selects (+experiment=loop_sweep)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    jobs = 1
    for override in overrides:
        if override.is_sweep_override():
            jobs *= len(list(override.sweep_string_iterator()))
        group = os.path.join(REPO, "conf", override.key_or_group, f"{override.value()}.yaml")
        if not override.is_sweep_override() and os.path.isfile(group):
            params = ((yaml.safe_load(open(group)) or {}).get("hydra") or {}).get("sweeper", {})
            jobs *= sweep_jobs(OverridesParser.create().parse_overrides(
                [f"{key}={value}" for key, value in params.get("params", {}).items()]))
    return jobs


def generated(outcome: Outcome) -> None:
    from scripts.generate import unescape

    for prompt in [outcome.args[i + 1] for i, a in enumerate(outcome.args) if a == "--prompt"]:
        assert unescape(prompt) in outcome.result.stdout, outcome.report()


def exported_hf(outcome: Outcome) -> None:
    out = option(outcome.args, "--out")
    weights = [] if "--config-only" in outcome.args else ["tokenizer.json",
                                                           "model.safetensors.index.json"]
    outcome.wrote(*(os.path.join(out, name) for name in ["config.json", *weights]))


def preprocessed(outcome: Outcome) -> None:
    prefix = option(outcome.args, "--output")
    shards = glob.glob(os.path.join(outcome.root, f"{prefix}-*.bin"))
    assert shards, outcome.report()
    outcome.wrote(*(os.path.relpath(p, outcome.root) for p in shards),
                  *(os.path.relpath(p[:-4] + ".idx", outcome.root) for p in shards))


def printed(pattern: str, only_with: str = ""):
    """A check that the output matches `pattern` (when the arguments hold `only_with`)."""
    def check(outcome: Outcome) -> None:
        if only_with in outcome.args or not only_with:
            assert re.search(pattern, outcome.output, re.M), f"no {pattern!r}\n{outcome.report()}"
    return check


def out_files(*names):
    return lambda o: o.wrote(*(os.path.join(option(o.args, "--out"), name) for name in names))


EXPECT = {
    "pretrain.train": training_runs,
    "make train": training_runs,
    "scripts.generate": generated,
    "scripts.diagnose": printed(r"^loop\b"),                          # the per-loop table
    "scripts.plot_run": lambda o: o.wrote(
        option(o.args, "--out") or os.path.join(positionals(o.args)[0], "run.png")),
    "scripts.plot_sweep": lambda o: o.wrote(option(o.args, "--out", "sweep.png")),
    "scripts.convert_checkpoint": lambda o: o.wrote_checkpoint(positionals(o.args)[1]),
    "scripts.import_hf": lambda o: o.wrote_checkpoint(option(o.args, "--out")),
    "scripts.evaluate": out_files("samples.jsonl", "summary.json"),
    "scripts.loop_study": lambda o: o.wrote(*(os.path.join(
        option(o.args, "--out") or positionals(o.args)[1], name) for name in ("report.md",
                                                                               "report.json"))),
    "scripts.export_hf": exported_hf,
    "scripts.make_corpus": lambda o: o.wrote(option(o.args, "--output")),
    "scripts.train_tokenizer": lambda o: o.wrote(option(o.args, "--output")),
    "scripts.preprocess": preprocessed,
    "launch.slurm": printed(r"^#SBATCH ", only_with="--dry-run"),    # the rendered script
    "pip install": printed(r"^Would install ", only_with="--dry-run"),
    # the GPU check's CPU dry run: its JSON and markdown results, where $OUT is unset
    "bench/gpu_check.sh": lambda o: o.wrote(*(os.path.join(
        os.environ.get("OUT") or "outputs/gpu_check", name) for name in ("gpu_check.json",
                                                                           "gpu_check.md"))),
}


@pytest.fixture(scope="module")
def readme(tmp_path_factory, request):
    return Readme(str(tmp_path_factory.mktemp("readme")), request)


@pytest.mark.slow
@pytest.mark.parametrize("index", RUNNABLE, ids=lambda i: re.sub(
    r"[^\w.=/-]+", "_", f"L{COMMANDS[i].line}_{COMMANDS[i].run_form() or ''}")[:70])
def test_the_readme_command_runs_as_written(readme, index):
    outcome = readme.outcome(index)
    assert outcome.result.returncode == 0, outcome.report()
    check = EXPECT.get(outcome.program)
    if check is not None:
        check(outcome)


def test_every_readme_command_can_run_here_or_names_its_dry_run():
    """Without running anything: every command parses, names only known placeholders, has no
    `...` left once its optional parts are dropped, and a [GPU]/[cluster] one has a dry run."""
    assert len(RUNNABLE) >= 20, [c.code for c in COMMANDS]  # the README's blocks were all found
    for command in COMMANDS:
        form = command.run_form()
        if form is None or command.kind == "python":
            continue
        words = shlex.split(drop_optional(form))
        assert "..." not in words, f"README.md:{command.line}: `...` cannot run as written"
        assert set(PLACEHOLDER.findall(form)) <= {"run", "LoopCoder-V2"}, command
        assert program_of(words)[0], command
