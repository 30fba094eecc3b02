"""The corpus pipeline on the real two-node SLURM test cluster (tests/local_cluster.py: slurmctld and
two slurmd's on this machine, apt-get installed when missing, as root): the planted corpus of
tests/test_corpus_pipeline.py submitted with `--executor slurm --wait`, one job array per stage.
Its output must be byte for byte the local executor's. ~1-3 min per pipeline run here."""

import json
import os

import pytest

from data.curation.shards import KILL_HOOK
from tests.local_cluster import PARTITION
from tests.fixtures import output_of
from tests.test_corpus_pipeline import (
    KILLED_TASK_FILES, _mtimes, assert_planted_removed, build_corpus, cli_env, corpus_args,
    output_files, run_cli,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("corpus"))
    build_corpus(root)
    return root


@pytest.fixture(scope="module")
def local_output(corpus, tmp_path_factory):
    """The same corpus on the local executor: what the cluster's run must reproduce."""
    prefix = str(tmp_path_factory.mktemp("local") / "code")
    result = run_cli(corpus_args(corpus, prefix, "--workers", "2"))
    assert result.returncode == 0, output_of(result)
    return output_files(prefix)


def slurm_env(cluster, **extra) -> dict:
    return cli_env(SLURM_CONF=cluster.env["SLURM_CONF"], PATH=cluster.env["PATH"], **extra)


def slurm_args(corpus: str, prefix: str) -> list:
    return corpus_args(corpus, prefix, "--executor", "slurm", "--partition", PARTITION,
                       "--time", "00:20:00", "--job-name", "corpus_test", "--wait")


def slurm_logs(prefix: str, tail: int = 3000) -> str:
    logs = []
    for directory, _, files in os.walk(os.path.join(f"{prefix}.work", "logs")):
        if os.path.basename(directory) == "slurm_logs":
            for name in sorted(files):
                with open(os.path.join(directory, name), errors="replace") as stream:
                    logs.append(f"--- {directory}/{name}\n{stream.read()[-tail:]}")
    return "\n".join(logs)


def assert_same_output(prefix: str, reference: dict) -> None:
    ours = output_files(prefix)
    assert sorted(ours) == sorted(reference)
    for name, content in ours.items():
        if name.endswith(".stats.json"):
            assert json.loads(content) == json.loads(reference[name])
        elif not name.endswith(".json"):  # the manifest names the prefix's tokenizer path only
            assert content == reference[name], name


def test_planted_corpus_on_slurm_equals_the_local_run(cluster, corpus, local_output, tmp_path):
    prefix = str(tmp_path / "code")
    result = run_cli(slurm_args(corpus, prefix), env=slurm_env(cluster), timeout=900)
    assert result.returncode == 0, output_of(result) + slurm_logs(prefix)
    assert_planted_removed(prefix)
    assert_same_output(prefix, local_output)
    assert "near_duplicate 3" in result.stdout  # the table, printed once the jobs are done


def test_killed_task_is_resubmitted_alone(cluster, corpus, local_output, tmp_path):
    """Array task 1 of the tokenize stage is SIGKILLed after two documents: its job fails, the
    finalize job can never start (--wait cancels it) and the command says what is unfinished.
    The same command again submits that one task and the finalize stage, nothing else."""
    prefix = str(tmp_path / "code")
    args = slurm_args(corpus, prefix)
    killed = run_cli(args, env=slurm_env(cluster, **{KILL_HOOK: "tokenize:1:2"}), timeout=900)
    assert killed.returncode == 1, output_of(killed) + slurm_logs(prefix)
    assert "unfinished tasks (re-run the same command to run only these): tokenize [1]; finalize [0]" \
        in killed.stdout, killed.stdout
    assert "cancelled jobs" in killed.stdout
    work = f"{prefix}.work"
    before = {path: mtime for path, mtime in _mtimes(work).items()
              if "/logs/" not in path and not KILLED_TASK_FILES.search(path)}

    resumed = run_cli(args, env=slurm_env(cluster), timeout=900)
    assert resumed.returncode == 0, output_of(resumed) + slurm_logs(prefix)
    for stage in ("filter", "exact_find", "minhash_sign", "minhash_buckets", "minhash_cluster"):
        assert f"stage {stage:<16} job - (nothing left to run)" in resumed.stdout, resumed.stdout
    with open(os.path.join(work, "logs", "tokenize", "ranks_to_run.json")) as stream:
        assert json.load(stream) == [1]
    after = _mtimes(work)
    assert {path: after.get(path) for path in before} == before  # finished tasks' files untouched
    assert_same_output(prefix, local_output)
