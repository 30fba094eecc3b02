"""scripts/generate.py on a checkpoint the trainer wrote: both prompts come back continued, and
parallel (PLT) and sequential decoding print the same text (greedy decoding of the same function)."""

import subprocess
import sys

import pytest

from tests.fixtures import REPO, SMALL, output_of, run_trainer, small_data, trainer_env


@pytest.mark.slow
def test_generate_from_a_trained_checkpoint(tmp_path):
    trained = run_trainer(tmp_path, *SMALL, *small_data(), "train.max_steps=4")
    assert trained.returncode == 0, output_of(trained)
    outputs = {}
    for mode in ("parallel", "sequential"):
        done = subprocess.run(
            [sys.executable, "scripts/generate.py", "--checkpoint", str(tmp_path / "checkpoints"),
             "--prompt", "def add(a, b):\\n", "--prompt", "import os\\n", "--max-new-tokens", "6",
             "--mode", mode], cwd=REPO, env=trainer_env(), capture_output=True, text=True,
            timeout=300)
        assert done.returncode == 0, output_of(done)
        assert "def add(a, b):\n" in done.stdout and "import os\n" in done.stdout
        assert f"{mode} decoding" in done.stdout
        outputs[mode] = done.stdout.rsplit("-" * 60, 1)[0]
    assert outputs["parallel"] == outputs["sequential"]
