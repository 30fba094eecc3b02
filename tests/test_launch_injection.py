"""The rendered sbatch script cannot be turned into other shell commands by any value that reaches
it, and every accepted request renders a script that parses.

Every launch value and every kind of training override is tried with newlines, quotes, `$()`,
backticks, `;` and `#`. Each try must either be refused before anything is written (LaunchError
naming the key) or render a script that (1) parses (`bash -n`), (2) has nothing but comments
before its first command, (3) gives sbatch exactly the values configured (its `#SBATCH` lines read
as sbatch reads them) and (4) gives the trainer exactly the overrides typed (its command line
evaluated by bash), while the injected `touch` never runs."""

import os
import re
import shlex
import subprocess
import sys

import pytest

from launch.slurm import _parse, main, plan
from launch.validate import LaunchError

BASE = ["launch=cpu", "train.micro_batch_size=4"]
INJECTIONS = [
    "\ntouch {mark}",                # a new line: a command after an #SBATCH line or a comment
    "\r\ntouch {mark}",
    "x'; touch {mark}; '",           # out of single quotes
    'x"; touch {mark}; "',           # out of double quotes
    "$(touch {mark})",
    "`touch {mark}`",
    "x; touch {mark}",
    "x #comment\ntouch {mark}",
    "x\\",                           # a trailing backslash joins the next line
]
LAUNCH_KEYS = ["partition", "account", "qos", "mem", "time", "job_name", "log_dir", "python"]
LIST_KEYS = ["sbatch_args", "srun_args"]
TRAIN_KEYS = ["sample.prompt", "logging.wandb.name", "checkpoint.dir", "run_dir"]


def hydra_value(text: str) -> str:
    """`text` as a Hydra override value (a double-quoted string): what a user types."""
    quoted = re.sub(r'(\\*)("|$)', lambda m: m.group(1) * 2 + ('\\' + m.group(2) if m.group(2) else ""),
                    text)
    return '"' + quoted.replace("${", "\\${") + '"'


def sbatch_words(line: str) -> list:
    """An `#SBATCH` line's words as sbatch 22.05 reads them (src/sbatch/opt.c `_get_argument`):
    a word ends at unquoted whitespace (even an escaped one), '...' and "..." quote, a backslash
    takes the next character as is, an unquoted # ends the line. (Checked against the real sbatch
    of tests/local_cluster.py: a log folder with spaces, quotes, #, $() and % got its log.)"""
    words, rest = [], line[len("#SBATCH"):]
    while True:
        rest = rest.lstrip()
        if not rest:
            return words
        word, quote, escape, position = [], None, False, 0
        while position < len(rest) and (quote or not rest[position].isspace()):
            char = rest[position]
            position += 1
            if escape:
                escape = False
            elif char == "\\":
                escape = True
                continue
            elif quote:
                if char == quote:
                    quote = None
                    continue
            elif char in "\"'":
                quote = char
                continue
            elif char == "#":
                words.append("".join(word))
                return [w for w in words if w]
            word.append(char)
        assert quote is None, f"sbatch refuses an unmatched quote: {line!r}"
        words.append("".join(word))
        rest = rest[position:]


def directives(script: str) -> dict:
    """{flag: value} of the script's #SBATCH lines (valueless flags map to None)."""
    found = {}
    for line in script.splitlines():
        if line.startswith("#SBATCH"):
            for word in sbatch_words(line):
                flag, _, value = word.partition("=")
                found.setdefault(flag, []).append(value if "=" in word else None)
    return found


def trainer_argv(script: str, tmp_path) -> list:
    """The arguments bash gives `srun` in the script: its line run with srun replaced by a printer
    of its arguments (the line may span several lines: a multi-line prompt, quoted)."""
    line = script.split("\nsrun ", 1)[1].split(" &\nsrun_pid=$!", 1)[0]
    probe = f"print_args() {{ printf '%s\\0' \"$@\"; }}\nprint_args {line}\n"
    done = subprocess.run(["bash", "-c", probe], capture_output=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return done.stdout.decode().split("\0")[:-1]


def assert_safe(job, mark, tmp_path) -> None:
    script = job.script
    parsed = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
    assert parsed.returncode == 0 and not parsed.stderr, parsed.stderr
    header = script.split("set -uo pipefail", 1)[0]
    assert all(line.startswith("#") for line in header.splitlines()), header
    # The header runs as bash would run it: comments only, so nothing happens.
    subprocess.run(["bash", "-c", header], cwd=tmp_path, capture_output=True)
    # sbatch reads back the configured values.
    flags = directives(script)
    launch, spec = job.launch, job.spec
    assert flags["--job-name"] == [spec.job_name]
    assert flags["--output"] == [spec.log_dir.replace("%", "%%") + "/%x-%j.out"]
    assert flags["--time"] == [launch.time]
    for key in ("partition", "account", "qos", "mem"):
        assert flags.get(f"--{key}") == ([getattr(launch, key)] if getattr(launch, key) else None)
    for flag in launch.sbatch_args:
        name, _, value = flag.partition("=")
        assert (value if "=" in flag else None) in flags[name]
    # The trainer's command line: exactly the overrides, each one argument.
    python = launch.python or sys.executable
    assert trainer_argv(script, tmp_path) == ["--kill-on-bad-exit=0", *launch.srun_args, python, "-m",
                                              "pretrain.train", *spec.train_overrides]
    assert all(shlex.quote(python) + " -m" in line for line in script.splitlines()
               if not line.startswith("#") and ("-m pretrain.rendezvous" in line
                                                 or "-m launch.slurm" in line))
    assert not os.path.exists(mark), "an injected command ran"


def _try(overrides, key, mark, tmp_path):
    run_dir = [] if any(o.startswith("run_dir=") for o in overrides) else [f"run_dir={tmp_path}/run"]
    try:
        (job,) = plan(BASE + run_dir + overrides, check_cluster=False)
    except LaunchError as error:
        assert key in str(error) and "\n" not in str(error), str(error)
        return None
    assert_safe(job, mark, tmp_path)
    return job


@pytest.mark.slow  # ~4 s a key (nine plans)
@pytest.mark.parametrize("key", LAUNCH_KEYS + LIST_KEYS)
def test_launch_values_cannot_inject_commands(key, tmp_path):
    mark = str(tmp_path / "injected")
    for injection in INJECTIONS:
        value = "gpu" + injection.format(mark=mark)
        if key in LIST_KEYS:
            value = "--comment=" + value
        if key == "log_dir":
            value = f"{tmp_path}/logs {value}"
        override = (f"launch.{key}=[{hydra_value(value)}]" if key in LIST_KEYS
                    else f"launch.{key}={hydra_value(value)}")
        job = _try([override], f"launch.{key}", mark, tmp_path)
        if job is not None:  # accepted: the value arrived whole where it lands
            landed = getattr(job.launch, key)
            assert landed == ([value] if key in LIST_KEYS else value)


@pytest.mark.slow  # ~4 s a key (nine plans)
@pytest.mark.parametrize("key", TRAIN_KEYS)
def test_training_overrides_reach_the_trainer_whole(key, tmp_path):
    mark = str(tmp_path / "injected")
    for injection in INJECTIONS:
        value = f"{tmp_path}/x" + injection.format(mark=mark)
        job = _try([f"{key}={hydra_value(value)}"], key, mark, tmp_path)
        if job is None:
            # Only a control character in run_dir, which lands in #SBATCH --output (log_dir).
            assert key == "run_dir" and re.search(r"[\r\n]", value), f"{key}={value!r} refused"
            continue
        (typed,) = [o for o in job.spec.train_overrides if o.startswith(key + "=")]
        assert _parse([typed])[0].value() == value  # the trainer's Hydra reads the same value


def test_a_multiline_prompt_renders_a_script_that_parses_and_keeps_the_prompt(tmp_path):
    prompt = "def add(a, b):\n    '''Add.'''\n    return a + b  # $HOME `x`\n"
    job = _try([f"sample.prompt={hydra_value(prompt)}"], "sample.prompt", str(tmp_path / "m"),
               tmp_path)
    (typed,) = [o for o in job.spec.train_overrides if o.startswith("sample.prompt=")]
    assert _parse([typed])[0].value() == prompt
    (comment,) = [line for line in job.script.splitlines() if line.startswith("# Rendered by:")]
    assert "\\n    return a + b" in comment  # the submit command, on its one comment line


def test_a_job_name_cannot_write_the_script_outside_the_log_folder(tmp_path):
    for name in ["../../etc/cron.d/x", "a/b", "name with spaces", ""]:
        with pytest.raises(LaunchError, match=r"launch\.job_name=.*script file"):
            plan(BASE + [f"run_dir={tmp_path}", f"launch.job_name={hydra_value(name)}"],
                 check_cluster=False)


@pytest.mark.parametrize("line", ["if true; then", "echo 'unclosed", "cat <<EOF", "export A=1 \\",
                                  "fi"])
def test_env_setup_lines_that_do_not_parse_alone_are_refused(line, tmp_path):
    with pytest.raises(LaunchError, match=r"launch\.env_setup entry .*bash -n"):
        plan(BASE + [f"run_dir={tmp_path}", f"launch.env_setup=[{hydra_value(line)}]"],
             check_cluster=False)


def test_env_setup_is_shell_as_documented(tmp_path):
    lines = ["module load cuda/12.4 || true", "source .venv/bin/activate", 'export X="a b"']
    value = ",".join(hydra_value(line) for line in lines)
    (job,) = plan(BASE + [f"run_dir={tmp_path}", f"launch.env_setup=[{value}]"], check_cluster=False)
    assert "\n".join(lines) in job.script
    assert_safe(job, str(tmp_path / "m"), tmp_path)


# ---- the trainer's own validation (model and data.* included) runs before sbatch: a job that
# would die after hours in the queue
@pytest.mark.parametrize("overrides, named", [
    (["model.num_loops=0"], "model.num_loops=0"),
    (["model.swa_window=-1"], "model.swa_window=-1"),
    (["launch.gpus_per_node=2", "parallel.tp=2", "model.ffn_hidden_size=129"], "ffn_hidden_size"),
    (["data.fim_rate=1.5"], "data.fim_rate=1.5"),
])
def test_models_the_trainer_would_refuse_are_refused_at_submit(overrides, named, tmp_path, capsys):
    status = main(["submit", "--dry-run", *BASE, f"run_dir={tmp_path}", *overrides])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("error: ") and named in err, err
    assert "Traceback" not in err and "#SBATCH" not in err
