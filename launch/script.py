"""Render the sbatch script of one training job from `launch.*`.

Layout of a job: one `srun` task per rank (`--ntasks-per-node=launch.gpus_per_node`), each running
`python -m pretrain.train`, which takes its rank from SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID and the
rendezvous from MASTER_ADDR/MASTER_PORT exported here. Not torchrun, because of the stop signal: the
batch shell is the one process SLURM reliably warns (`--signal=B:USR1@grace`, and `scancel --batch`),
and it runs on the first node only. It must reach every rank on every node. `srun` relays a signal it
receives to all its tasks on all nodes, so the shell forwards USR1 to srun and every trainer gets it.
Under torchrun the relayed signal would hit the torchrun agents, which have no USR1 handler and die
without a checkpoint (measured: shared/SLURM_NOTES.md); torchrun's restarts would only duplicate
SLURM's requeue.

Exit protocol (pretrain/signals.py): the trainer checkpoints and exits 75 after a stop signal, and the
script then runs `scontrol requeue $SLURM_JOB_ID`: the same job id starts again later (with
SLURM_RESTART_COUNT=1, ...) and `checkpoint.resume=auto` continues from `<checkpoint.dir>/latest`.
Unless the user cancelled the job: `scancel JOBID` sends TERM too (the trainer still saves), and
requeueing would undo the cancel (SLURM allows it). Measured on the test cluster, while the batch
shell still runs: a cancelled job reads `JobState=COMPLETING Reason=None`, one past its time limit
`JobState=COMPLETING Reason=TimeLimit`. So on the first the script requeues nothing and cancels the
chained follow-ups (`scancel` ends the run); a time limit is requeued, and so is a TERM while the job
is RUNNING (a preemption's grace time; the test cluster has no preemption to measure).
Exit 0 means the run reached train.max_steps: the script cancels the chained follow-up jobs that
would have nothing to do. Any other status ends the job as failed; a chained follow-up job
(afterany) then retries from the latest checkpoint.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

EXIT_REQUEUE = 75  # pretrain/signals.py; repeated so rendering needs neither torch nor the trainer


@dataclass
class JobSpec:
    """One job to submit: its name, its run folder, the trainer's overrides."""

    job_name: str
    run_dir: str
    log_dir: str
    train_overrides: list[str]


def sbatch_word(text: str) -> str:
    """`text` as one word of an `#SBATCH` line. sbatch splits those lines at whitespace (also an
    escaped one), reads '...' and "..." quotes and backslash escapes, and cuts at an unquoted `#`
    (src/sbatch/opt.c `_get_argument`): a word with anything but plain characters goes in double
    quotes, with `"` and `\\` escaped. A newline cannot be quoted there: launch/validate.py refuses
    it before rendering."""
    if re.fullmatch(r"[\w@%+=:,./-]+", text):
        return text
    return '"' + re.sub(r'(["\\])', r"\\\1", text) + '"'


def comment(text: str) -> str:
    """`text` on one comment line: control characters (a newline would end the comment and start
    a command) written as escapes, e.g. a multi-line sample.prompt in the submit command."""
    return re.sub(r"[\x00-\x1f\x7f]", lambda match: repr(match.group())[1:-1], text)


def sbatch_directives(launch, job: JobSpec, workdir: str) -> list[str]:
    w = sbatch_word
    flags = [
        f"--job-name={w(job.job_name)}",
        f"--nodes={launch.nodes}",
        f"--ntasks-per-node={launch.gpus_per_node}",
    ]
    if launch.accelerator == "gpu":
        flags.append(f"--gpus-per-node={launch.gpus_per_node}")
    if launch.cpus_per_task:
        flags.append(f"--cpus-per-task={launch.cpus_per_task}")
    if launch.mem:
        flags.append(f"--mem={w(launch.mem)}")
    for key in ("partition", "account", "qos"):
        if getattr(launch, key):
            flags.append(f"--{key}={w(getattr(launch, key))}")
    flags += [
        f"--time={w(launch.time)}",
        # %x (job name) and %j (job id) are sbatch's patterns; a % of the folder's name is %%.
        f"--output={w(job.log_dir.replace('%', '%%'))}/%x-%j.out",
        "--open-mode=append",  # one log per job id across its requeued runs
        f"--chdir={w(workdir)}",
        f"--signal=B:USR1@{launch.signal_grace_s}",
    ]
    flags.append("--requeue" if launch.requeue else "--no-requeue")
    if launch.exclusive:
        flags.append("--exclusive")
    flags += [w(flag) for flag in launch.sbatch_args]
    return [f"#SBATCH {flag}" for flag in flags]


def render(launch, job: JobSpec, python: str, workdir: str, submit_command: str) -> str:
    """The whole batch script as text (bash). Values are quoted for where they land: `#SBATCH`
    words by `sbatch_word`, the submit command on a comment line by `comment`, every argument of a
    command line by shlex.quote; `launch.env_setup` is shell by design (checked to parse)."""
    q = shlex.quote
    train = " ".join(q(arg) for arg in [python, "-m", "pretrain.train", *job.train_overrides])
    srun = " ".join(["srun", "--kill-on-bad-exit=0", *map(q, launch.srun_args), train])
    env_setup = "\n".join(launch.env_setup) if launch.env_setup else "# (launch.env_setup is empty)"
    requeue = (
        f'    if scontrol requeue "$SLURM_JOB_ID"; then\n'
        f'        echo "[launch] requeued job $SLURM_JOB_ID: the next run resumes from latest"\n'
        f"        exit 0\n"
        f"    fi\n"
        f'    echo "[launch] scontrol requeue failed: a chained follow-up job (if any) resumes"\n'
        if launch.requeue else
        '    echo "[launch] launch.requeue=false: not requeued; a chained follow-up job (if any) resumes"\n'
    )
    return f"""\
#!/bin/bash
{chr(10).join(sbatch_directives(launch, job, workdir))}
# Rendered by: {comment(submit_command)}
# Edit the config (conf/launch/, launch.*), not this file: `submit` writes it again each time.
set -uo pipefail

echo "[launch] job $SLURM_JOB_ID (restart ${{SLURM_RESTART_COUNT:-0}}) on $SLURM_JOB_NODELIST at $(date -Is)"

# --- environment (launch.env_setup)
{env_setup}

# --- rendezvous: the first node's address, refused if loopback on a multi-node job, and a port per
# job id (pretrain/rendezvous.py)
MASTER_ADDR=$({q(python)} -m pretrain.rendezvous) || {{ echo "[launch] no usable rendezvous address: not starting" >&2; exit 1; }}
MASTER_PORT=$({q(python)} -m pretrain.rendezvous --port) || exit 1
export MASTER_ADDR MASTER_PORT
echo "[launch] rendezvous $MASTER_ADDR:$MASTER_PORT, $SLURM_NNODES node(s) x {launch.gpus_per_node} rank(s)"

# --- stop signal: SLURM warns this shell (--signal=B:USR1, scancel --batch); srun relays it to every rank
srun_pid=""
forward_stop() {{
    echo "[launch] $1 received at $(date -Is): forwarding to the trainer ranks (checkpoint, then exit {EXIT_REQUEUE})"
    [ -n "$srun_pid" ] && kill -USR1 "$srun_pid" 2>/dev/null
}}
trap 'forward_stop USR1' USR1
trap 'forward_stop TERM' TERM

{srun} &
srun_pid=$!
# A trapped signal interrupts `wait`; wait again until srun is gone, then read its stored status.
wait "$srun_pid"
while kill -0 "$srun_pid" 2>/dev/null; do wait "$srun_pid"; done
wait "$srun_pid"; rc=$?
echo "[launch] trainer exited with status $rc at $(date -Is)"

if [ "$rc" -eq {EXIT_REQUEUE} ]; then
    state=$(scontrol show job "$SLURM_JOB_ID" -o 2>/dev/null | grep -o "JobState=[A-Z_]* Reason=[^ ]*")
    if [[ "$state" == "JobState=CANCELLED "* || "$state" == "JobState=COMPLETING Reason=None" ]]; then
        echo "[launch] the job was cancelled (scancel): not requeued; its checkpoint is saved, resubmit to continue"
        {q(python)} -m launch.slurm cancel-followups "$SLURM_JOB_ID" || true
        exit "$rc"
    fi
{requeue}    exit {EXIT_REQUEUE}
elif [ "$rc" -eq 0 ]; then
    # train.max_steps reached: chained follow-up jobs would only load the last checkpoint and stop.
    {q(python)} -m launch.slurm cancel-followups "$SLURM_JOB_ID" || true
fi
exit "$rc"
"""
