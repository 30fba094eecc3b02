"""`launch.*`: how a run is put on a SLURM cluster (one schema, filled by `conf/launch/*.yaml`).

The trainer never reads these keys; `python -m launch.slurm submit` composes the same Hydra config as
`python -m pretrain.train` and renders the sbatch script from this node. Light on purpose: importing
it pulls in neither torch nor megatron, so the trainer's schema can hold it as its `launch` node.
"""

from dataclasses import dataclass, field
from typing import List


@dataclass
class LaunchConfig:
    nodes: int = 1
    # Processes per node: one per GPU (accelerator=gpu), or that many CPU processes (accelerator=cpu).
    gpus_per_node: int = 8
    accelerator: str = "gpu"            # gpu (requests --gpus-per-node, NCCL) | cpu (gloo, no GRES)
    cpus_per_task: int = 0              # 0: leave it to the partition's default
    mem: str = ""                       # --mem per node, e.g. 0 (all) or 400G; "": cluster default
    partition: str = ""                 # "": the cluster's default partition
    account: str = ""
    qos: str = ""
    time: str = "04:00:00"              # per job; a longer run continues by requeue / follow-up jobs
    job_name: str = "loopcoder"
    exclusive: bool = False
    log_dir: str = "${run_dir}/slurm"   # sbatch scripts and one log per job (%x-%j.out, appended)
    # SLURM sends SIGUSR1 to the batch shell this many seconds before the time limit; the script
    # forwards it to every rank, which checkpoints and exits 75, and the script requeues the job.
    # SLURM's timer is coarse (it fires up to a minute late): leave room for a step plus a save.
    signal_grace_s: int = 300
    requeue: bool = True                # `scontrol requeue` when the trainer exits 75 (stopped early)
    # Follow-up jobs chained with --dependency=afterany: each resumes from `latest`, so a run outlives
    # a failed requeue or a crash. The job that reaches train.max_steps cancels the ones left.
    chain: int = 0
    python: str = ""                    # interpreter on the nodes; "": the one running `submit`
    # Shell lines run at the top of the job, e.g. ["module load cuda/12.4", "source .venv/bin/activate"].
    env_setup: List[str] = field(default_factory=list)
    # Extra `srun` flags for the training step, e.g. ["--container-image=nvcr.io#nvidia/pytorch:24.07-py3",
    # "--container-mounts=/data:/data"] (pyxis), and extra `#SBATCH` flags, e.g. ["--constraint=h100"].
    srun_args: List[str] = field(default_factory=list)
    sbatch_args: List[str] = field(default_factory=list)
