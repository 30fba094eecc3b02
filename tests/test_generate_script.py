"""scripts/generate.py on a checkpoint the trainer wrote: both prompts come back continued, and
parallel (PLT) and sequential decoding print the same text (greedy decoding of the same function);
prompts keep their non-ASCII text; bad arguments are refused naming the argument."""

import subprocess
import sys

import pytest

from scripts.generate import main, unescape
from tests.fixtures import REPO, SMALL, output_of, run_trainer, small_data, trainer_env

MAX_POSITIONS = 128  # the trained model's max_position_embeddings (train.seq_length is 64)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("generate")
    trained = run_trainer(run_dir, *SMALL, *small_data(), "train.max_steps=4",
                          f"model.max_position_embeddings={MAX_POSITIONS}")
    assert trained.returncode == 0, output_of(trained)
    return str(run_dir / "checkpoints")


def generate(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "scripts/generate.py", *args], cwd=REPO,
                          env=trainer_env(), capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_generate_from_a_trained_checkpoint(checkpoint):
    """Both modes print the same text; a non-ASCII prompt comes back as typed (it was mojibake)."""
    outputs = {}
    for mode in ("parallel", "sequential"):
        done = generate("--checkpoint", checkpoint, "--prompt", "def add(a, b):\\n", "--prompt",
                        "import os\\n", "--prompt", "def grüße(名前):\\n    return '¡café ☕!'\\n",
                        "--max-new-tokens", "6", "--mode", mode)
        assert done.returncode == 0, output_of(done)
        assert "def add(a, b):\n" in done.stdout and "import os\n" in done.stdout
        assert "def grüße(名前):\n    return '¡café ☕!'\n" in done.stdout
        assert f"{mode} decoding" in done.stdout and "warning: --prompt" not in done.stderr
        outputs[mode] = done.stdout.rsplit("-" * 60, 1)[0]
    assert outputs["parallel"] == outputs["sequential"]


@pytest.mark.slow
def test_a_prompt_past_the_trained_positions_warns_and_the_summary_names_the_mode(checkpoint):
    long_prompt = "x = 1\\n" * 60  # > MAX_POSITIONS tokens with the new ones
    done = generate("--checkpoint", checkpoint, "--prompt", long_prompt, "--max-new-tokens", "8")
    assert done.returncode == 0, output_of(done)
    assert f"past the model's max_position_embeddings={MAX_POSITIONS}" in done.stderr
    assert "--prompt #1 has" in done.stderr
    assert "parallel decoding" in done.stdout  # the default for this (clp) model, not "None"


@pytest.mark.parametrize("args, named", [
    (["--max-new-tokens", "0"], "--max-new-tokens 0: generate at least 1 token"),
    (["--max-new-tokens", "-3"], "--max-new-tokens -3"),
    (["--prompt", "x", "--prompt", ""], "--prompt #2 is empty"),
])
def test_bad_arguments_are_refused_naming_the_argument(args, named, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["--checkpoint", "/nowhere", *args])
    assert stopped.value.code == 2 and named in capsys.readouterr().err


@pytest.mark.parametrize("typed, meant", [
    ("def f():\\n    return 1\\n", "def f():\n    return 1\n"),
    ("s = 'é ü 名 ☕'", "s = 'é ü 名 ☕'"),                 # non-ASCII kept (was mojibake)
    ("print('a\\\\nb')", "print('a\\nb')"),               # \\ is one backslash
    ("tab\\there \\u00e9 \\x41 \\N{BLACK STAR}", "tab\there é A ★"),
    ("path C:\\data\\bin", "path C:\\data\\bin"),          # not escapes here: kept
])
def test_prompt_escapes_are_decoded_and_nothing_else(typed, meant):
    assert unescape(typed) == meant
