"""scripts/generate.py on a checkpoint the trainer wrote: both prompts come back continued, and
parallel (PLT) and sequential decoding print the same text (greedy decoding of the same function);
prompts keep their non-ASCII text; bad arguments are refused naming the argument."""

import subprocess
import sys

import pytest

from pretrain.errors import run_tool
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
def test_a_prompt_past_the_model_positions_is_refused_naming_the_flag_and_the_limit(checkpoint):
    """Prompt + new tokens past max_position_embeddings: exit 2 before any decoding (a huge
    --max-new-tokens ran for minutes); one that fits decodes and names its mode."""
    long_prompt = "x = 1\\n" * 60  # > MAX_POSITIONS tokens with the new ones
    for max_new in ("8", "100000"):
        done = generate("--checkpoint", checkpoint, "--prompt", long_prompt, "--max-new-tokens",
                        max_new)
        assert done.returncode == 2 and "Traceback" not in done.stderr, output_of(done)
        assert f"--max-new-tokens {max_new}" in done.stderr, done.stderr
        assert f"max_position_embeddings={MAX_POSITIONS}" in done.stderr, done.stderr
    done = generate("--checkpoint", checkpoint, "--prompt", "x = 1\\n", "--max-new-tokens", "8")
    assert done.returncode == 0, output_of(done)
    assert "parallel decoding" in done.stdout  # the default for this (clp) model, not "None"


@pytest.mark.parametrize("args, named", [
    (["--max-new-tokens", "0"], "--max-new-tokens 0: it must be at least 1"),
    (["--max-new-tokens", "-3"], "--max-new-tokens -3"),
    (["--temperature", "nan"], "--temperature nan"),
    (["--temperature", "-1"], "--temperature -1.0"),
    (["--temperature", "inf"], "--temperature inf"),
    (["--top-p", "0"], "--top-p 0.0"),
    (["--top-p", "2"], "--top-p 2.0"),
    (["--top-p", "nan"], "--top-p nan"),
    (["--seed", "-1"], "--seed -1"),
    (["--seed", str(2 ** 64)], "--seed"),
])
def test_bad_sampling_flags_are_refused_before_loading_naming_the_flag(args, named, capsys):
    """The checkpoint does not exist: the flag is refused before it is looked at (exit 2)."""
    assert run_tool(main, ["--checkpoint", "/nowhere", *args]) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err, err


def test_an_empty_prompt_is_refused_naming_it(capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["--checkpoint", "/nowhere", "--prompt", "x", "--prompt", ""])
    assert stopped.value.code == 2 and "--prompt #2 is empty" in capsys.readouterr().err


@pytest.mark.parametrize("typed, meant", [
    ("def f():\\n    return 1\\n", "def f():\n    return 1\n"),
    ("s = 'é ü 名 ☕'", "s = 'é ü 名 ☕'"),                 # non-ASCII kept (was mojibake)
    ("print('a\\\\nb')", "print('a\\nb')"),               # \\ is one backslash
    ("tab\\there \\u00e9 \\x41 \\N{BLACK STAR}", "tab\there é A ★"),
    ("path C:\\data\\bin", "path C:\\data\\bin"),          # not escapes here: kept
])
def test_prompt_escapes_are_decoded_and_nothing_else(typed, meant):
    assert unescape(typed) == meant
