"""The SLURM launcher without a cluster: the rendered sbatch script, sweeps, the rendezvous check.

The same scripts run against a real slurmctld in tests/test_slurm_cluster.py; here only what can be
read off the text or computed without SLURM, so a broken template fails in seconds."""

import subprocess

import pytest

from pretrain.rendezvous import RendezvousError, check_rendezvous
from launch.slurm import expand_sweep, plan

CPU_JOB = ["launch=cpu", "launch.nodes=2", "train.micro_batch_size=4", "run_dir=/tmp/lc-render"]


@pytest.fixture(scope="module")
def cpu_job():
    (job,) = plan(CPU_JOB, check_cluster=False)
    return job


def test_script_is_valid_bash(cpu_job):
    result = subprocess.run(["bash", "-n"], input=cpu_job.script, text=True, capture_output=True)
    assert result.returncode == 0, result.stderr


def test_script_asks_for_one_task_per_rank_with_warning_and_requeue(cpu_job):
    directives = [line for line in cpu_job.script.splitlines() if line.startswith("#SBATCH")]
    for flag in ["--nodes=2", "--ntasks-per-node=1", "--signal=B:USR1@60", "--requeue",
                 "--open-mode=append", "--output=/tmp/lc-render/slurm/%x-%j.out"]:
        assert f"#SBATCH {flag}" in directives
    assert not any("--gpus-per-node" in line for line in directives)  # launch=cpu: no GRES


def test_script_requeues_on_the_trainers_exit_75(cpu_job):
    script = cpu_job.script
    assert 'if [ "$rc" -eq 75 ]' in script
    assert 'scontrol requeue "$SLURM_JOB_ID"' in script
    assert 'kill -USR1 "$srun_pid"' in script  # the batch shell forwards the warning to srun


def test_trainer_command_pins_run_dir_and_resume_and_leaves_launch_keys_out(cpu_job):
    overrides = cpu_job.spec.train_overrides
    assert "run_dir=/tmp/lc-render" in overrides and "checkpoint.resume=auto" in overrides
    assert "train.micro_batch_size=4" in overrides
    assert not any(o.startswith(("launch", "+launch")) for o in overrides)


def test_gpu_job_requests_gpus_partition_and_account():
    (job,) = plan(["launch.nodes=4", "launch.partition=gpu", "launch.account=plt", "run_dir=/tmp/g",
                   "train.global_batch_size=32", "train.micro_batch_size=1"], check_cluster=False)
    for flag in ["--nodes=4", "--ntasks-per-node=8", "--gpus-per-node=8", "--partition=gpu",
                 "--account=plt", "--exclusive"]:
        assert f"#SBATCH {flag}\n" in job.script


def test_loop_sweep_gives_one_job_per_loop_count_each_with_its_run_dir():
    jobs = plan(CPU_JOB + ["model.num_loops=1,2,3"], check_cluster=False)
    # Folders as `pretrain.train -m` names them (conf/config.yaml hydra.sweep.subdir).
    assert [j.spec.run_dir for j in jobs] == ["/tmp/lc-render/0_R1", "/tmp/lc-render/1_R2",
                                              "/tmp/lc-render/2_R3"]
    assert [j.spec.job_name for j in jobs] == ["loopcoder-0_R1", "loopcoder-1_R2", "loopcoder-2_R3"]
    for loops, job in zip([1, 2, 3], jobs):
        assert f"model.num_loops={loops}" in job.spec.train_overrides


def test_expand_sweep_keeps_fixed_overrides():
    assert expand_sweep(["a=1", "b=2,3"]) == [["a=1", "b=2"], ["a=1", "b=3"]]
    assert expand_sweep(["a=1"]) == [["a=1"]]


# ---- rendezvous: a loopback address on a multi-node job is the classic silent hang
def test_loopback_rendezvous_on_two_real_nodes_fails_loudly():
    with pytest.raises(RendezvousError, match="SLURM_NNODES=2.*loopback|loopback.*SLURM_NNODES=2"):
        check_rendezvous("localhost", 2, ["127.0.1.1", "10.0.0.12"])


def test_loopback_rendezvous_fails_when_node_addresses_are_unknown():
    with pytest.raises(RendezvousError, match="/etc/hosts"):
        check_rendezvous("127.0.1.1", 2, None)


@pytest.mark.parametrize("master, nnodes, nodes", [
    ("127.0.0.1", 1, ["127.0.0.1"]),                 # one node: loopback is right
    ("10.0.0.11", 2, ["10.0.0.11", "10.0.0.12"]),    # a routable address
    ("127.0.0.1", 2, ["127.0.0.1", "127.0.0.1"]),    # emulated nodes on one host (local cluster)
])
def test_rendezvous_accepted(master, nnodes, nodes):
    check_rendezvous(master, nnodes, nodes)
