"""The launcher against a real SLURM cluster: slurmctld + two slurmd's (n1, n2) started by this module
(tests/local_cluster.py; it apt-get installs slurm-wlm and munge when missing, as root).

Jobs are the tiny PLT on the stdlib corpus, CPU/gloo, submitted through `python -m launch.slurm`.
Each job's log is printed when a test fails."""

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import launch.slurm

pytestmark = pytest.mark.slow

# Enough steps to signal the job mid-run: the test signals once 3 steps are logged, and the signal
# reaches the ranks within ~0.5 s, against >= 2 s of remaining steps (0.04-0.25 s per step here).
STEPS = 60


def tiny(cache_dir, **extra) -> list[str]:
    overrides = {
        "launch": "cpu", "model.num_layers": 2, "model.hidden_size": 64, "model.ffn_hidden_size": 128,
        "train.seq_length": 64, "train.global_batch_size": 4, "train.micro_batch_size": 2,
        "train.max_steps": STEPS, "train.warmup_steps": 2, "logging.interval": 1,
        "eval.interval": 0, "sample.max_new_tokens": 0, "logging.wandb.mode": "disabled",
        # No periodic or final checkpoint (each costs seconds here); a stop signal still saves one.
        "checkpoint.interval": 0, "checkpoint.save_final": "false", "data.stdlib_max_files": 40, "data.vocab_size": 600,
        "data.num_workers": 1, "data.cache_dir": cache_dir,
    }
    overrides.update(extra)
    return [f"{key}={value}" for key, value in overrides.items()]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data-cache"))


def submit(cluster, overrides) -> list[str]:
    """`python -m launch.slurm submit ...` in a fresh process, as a user runs it; the job ids."""
    result = subprocess.run([sys.executable, "-m", "launch.slurm", "submit", *overrides],
                            env=cluster.env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return all_job_ids(result.stdout)


def submit_in_process(capsys, overrides) -> list[str]:
    """The same CLI through its main(): saves the ~8 s import of the trainer's schema per call."""
    capsys.readouterr()
    status = launch.slurm.main(["submit", *overrides])
    out = capsys.readouterr()
    assert status == 0, out.err
    return all_job_ids(out.out)


def all_job_ids(output: str) -> list[str]:
    """Submitted and follow-up job ids, in submission order."""
    found = re.findall(r"(?:submitted job|follow-ups) ([\d,]+)", output)
    return [job_id for group in found for job_id in group.split(",")]


def job_info(cluster, job_id) -> dict:
    out = subprocess.run(["scontrol", "show", "job", job_id, "-o"], env=cluster.env,
                         capture_output=True, text=True, check=True).stdout
    return dict(field.split("=", 1) for field in out.split() if "=" in field)


def wait_job(cluster, job_id, run_dir, timeout_s=300) -> dict:
    """Wait until the job reaches a final state; fail with its log otherwise."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = job_info(cluster, job_id)
        if info["JobState"] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL",
                                "OUT_OF_MEMORY"):
            return info
        time.sleep(1)
    # Every rank prints its stacks into the log (pretrain/signals.py): where the job waits.
    subprocess.run(["scancel", "--signal=USR2", job_id], env=cluster.env)
    time.sleep(5)
    pytest.fail(f"job {job_id} still {info['JobState']} after {timeout_s} s\n{job_logs(run_dir)}")


def job_logs(run_dir, tail: int = 20000) -> str:
    logs = sorted(Path(run_dir, "slurm").glob("*.out"))
    return "\n".join(f"--- {log}\n{log.read_text(errors='replace')[-tail:]}" for log in logs)


def wait_for_rows(cluster, job_id, run_dir, rows: int, timeout_s=240) -> None:
    """Wait until the running job's metrics.jsonl has `rows` rows."""
    metrics, deadline = Path(run_dir, "metrics.jsonl"), time.monotonic() + timeout_s
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= rows):
        assert time.monotonic() < deadline, f"fewer than {rows} metrics rows\n{job_logs(run_dir)}"
        assert job_info(cluster, job_id)["JobState"] in ("PENDING", "RUNNING"), job_logs(run_dir)
        time.sleep(0.2)


def losses(run_dir) -> dict[int, float]:
    """step -> loss from metrics.jsonl (the last row of a step wins; a torn last line of a killed
    job is dropped, as every reader drops it: pretrain/run_files.py)."""
    from pretrain.run_files import read_rows

    rows = read_rows(str(Path(run_dir, "metrics.jsonl")))
    return {row["step"]: row["loss"] for row in rows if "loss" in row}


# ------------------------------------------------------------------------------- a 2-rank job
@pytest.fixture(scope="module")
def reference_run(cluster, cache_dir, tmp_path_factory):
    """2 nodes x 1 rank, STEPS steps, one chained follow-up job (launch.chain=1)."""
    run_dir = str(tmp_path_factory.mktemp("reference"))
    ids = submit(cluster, tiny(cache_dir, **{"launch.nodes": 2, "launch.chain": 1, "run_dir": run_dir}))
    assert len(ids) == 2, ids
    info = wait_job(cluster, ids[0], run_dir)
    return run_dir, ids, info


def test_two_rank_job_trains_to_max_steps(reference_run):
    run_dir, (job_id, _), info = reference_run
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", job_logs(run_dir)
    assert sorted(losses(run_dir)) == list(range(1, STEPS + 1)), job_logs(run_dir)
    log = Path(run_dir, "slurm", f"loopcoder-{job_id}.out").read_text()
    assert "2 node(s) x 1 rank(s)" in log and "(world 2:" in log


def test_follow_up_job_is_cancelled_once_the_run_is_complete(cluster, reference_run):
    run_dir, (_, follow_up_id), _ = reference_run
    follow_up = job_info(cluster, follow_up_id)
    assert follow_up["JobState"] == "CANCELLED", job_logs(run_dir)
    assert follow_up["RunTime"] == "00:00:00"  # it never started


# ------------------------------------------------------------------------------- signal
def test_usr1_checkpoints_requeues_and_resumes_with_exact_losses(cluster, cache_dir, reference_run,
                                                                  tmp_path, capsys):
    run_dir = str(tmp_path)
    (job_id,) = submit_in_process(capsys, tiny(cache_dir, **{"launch.nodes": 2, "run_dir": run_dir}))
    wait_for_rows(cluster, job_id, run_dir, 3)
    # What --signal=B:USR1@grace does before the time limit, now: only the batch shell is signalled.
    subprocess.run(["scancel", "--signal=USR1", "--batch", job_id], env=cluster.env, check=True)

    info = wait_job(cluster, job_id, run_dir)
    log = job_logs(run_dir, tail=10**6)
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", log[-6000:]
    stopped_at = int(re.search(r"resumed from \S*iter_0*(\d+)", log).group(1))
    assert 3 <= stopped_at < STEPS, log[-6000:]
    reference = losses(reference_run[0])
    assert losses(run_dir) == reference  # same world, same data order: bit-identical losses


def test_usr2_prints_every_ranks_stacks_and_scancel_ends_the_run(cluster, cache_dir, tmp_path,
                                                                  capsys):
    """The README's command for a job that seems stuck: every rank's stacks in the log, the run
    goes on. Then a user's `scancel`: the trainer saves, and the job is not requeued."""
    run_dir = str(tmp_path)
    (job_id,) = submit_in_process(capsys, tiny(cache_dir, **{
        "launch.nodes": 2, "run_dir": run_dir, "train.max_steps": 100000}))
    wait_for_rows(cluster, job_id, run_dir, 3)
    subprocess.run(["scancel", "--signal=USR2", job_id], env=cluster.env, check=True)
    deadline = time.monotonic() + 240
    while job_logs(run_dir, tail=10**7).count("Current thread 0x") < 2:  # one dump per rank
        assert time.monotonic() < deadline, job_logs(run_dir)
        time.sleep(0.2)
    rows_then = len(Path(run_dir, "metrics.jsonl").read_text().splitlines())
    wait_for_rows(cluster, job_id, run_dir, rows_then + 3)  # the run goes on after the dump
    assert "pretrain/trainer.py" in job_logs(run_dir, tail=10**7)

    subprocess.run(["scancel", job_id], env=cluster.env, check=True)
    deadline = time.monotonic() + 120  # the save, within KillWait (tests/local_cluster.py)
    while "[launch] trainer exited with status" not in job_logs(run_dir, tail=10**7):
        assert time.monotonic() < deadline, job_logs(run_dir)
        time.sleep(0.5)
    time.sleep(15)  # a requeued job would be RUNNING again by now (cred_expire=10)
    info = job_info(cluster, job_id)
    log = job_logs(run_dir, tail=10**7)
    assert "[launch] trainer exited with status 75" in log, log[-6000:]  # it saved in time
    assert info["JobState"] == "CANCELLED" and info["Restarts"] == "0", log[-6000:]
    assert "not requeued; its checkpoint is saved" in log, log[-6000:]
    assert Path(run_dir, "checkpoints", "latest").exists(), log[-6000:]


# ------------------------------------------------------------------------------- sweep
def test_loop_sweep_submits_one_job_per_loop_count(cluster, cache_dir, tmp_path, capsys):
    ids = submit_in_process(capsys, tiny(cache_dir, **{
        "train.max_steps": 3, "train.warmup_steps": 1, "run_dir": tmp_path,
        "model.num_loops": "1,2,3"}))
    assert len(ids) == 3
    for number, (loops, job_id) in enumerate(zip([1, 2, 3], ids)):
        run_dir = tmp_path / f"{number}_R{loops}"
        info = wait_job(cluster, job_id, run_dir)
        assert info["JobName"] == f"loopcoder-{number}_R{loops}"
        assert info["JobState"] == "COMPLETED", job_logs(run_dir)
        assert f"num_loops: {loops}\n" in (run_dir / "config.yaml").read_text()
        assert sorted(losses(run_dir)) == [1, 2, 3]


# ------------------------------------------------------------------------------- bad requests
@pytest.mark.parametrize("bad, message", [
    ({"launch.nodes": 0}, "launch.nodes=0; a job needs at least 1 node"),
    ({"launch.partition": "nope"}, "launch.partition='nope' does not exist on this cluster; "
                                   "partitions: debug"),
    ({"launch.partition": "debug", "launch.nodes": 3}, "launch.nodes=3 but partition 'debug' has 2"),
    ({"launch.gpus_per_node": 3, "parallel.tp": 2}, "3 ranks is not divisible by parallel.tp * "
                                                    "parallel.pp = 2 * 1"),
    ({"launch.nodes": 2, "launch.gpus_per_node": 2, "parallel.tp": 4},
     "launch.gpus_per_node=2 is not a multiple of parallel.tp=4"),
    # the trainer's own validation, at the world size the job would have
    ({"launch.nodes": 2, "train.global_batch_size": 2}, "train.global_batch_size=2 is not divisible"),
], ids=["nodes0", "unknown-partition", "too-many-nodes", "world-vs-tp", "tp-across-nodes", "batch"])
def test_bad_request_fails_before_sbatch(cluster, cache_dir, tmp_path, capsys, bad, message):
    def queue() -> str:
        return subprocess.run(["squeue", "--noheader", "--all"], env=cluster.env,
                              capture_output=True, text=True, check=True).stdout

    before = queue()
    # In-process (the CLI's main): the 8 s import of the trainer's schema is paid once, not per case.
    status = launch.slurm.main(["submit", *tiny(cache_dir, **bad, run_dir=tmp_path)])
    stderr = capsys.readouterr().err
    assert status == 2 and message in stderr, stderr
    assert not Path(tmp_path, "slurm").exists()  # no script written
    assert queue() == before                     # no job submitted
