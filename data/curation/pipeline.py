"""`run_pipeline(plan, settings)`: prepare (or resume) the work folder, then run or submit the stages.

Before anything runs: the plan is checked against the work folder's (a resume must not mix
settings), and the output prefix's existing manifest, if any, against the tokenizer (as
scripts/preprocess.py does: shards of another tokenizer are never mixed in silently).
"""

import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from data.curation.executors import (
    ExecutorSettings, incomplete_tasks, render_slurm, run_local, submit_slurm, wait_slurm,
)
from data.curation.plan import CorpusPlan, prepare_work_dir, stage_dir
from data.curation.shards import stats_path
from data.curation.stages import build_stages
from data.curation.stats import format_table, read_summary
from data.indexed import check_manifest
from data.tokenizer import CodeTokenizer


@dataclass
class PipelineResult:
    complete: bool
    resumed: bool
    summary: Optional[Dict] = None                                  # when complete
    seconds: Dict[str, float] = field(default_factory=dict)         # local: wall time per stage
    submitted: List[Tuple[str, str]] = field(default_factory=list)  # slurm: (stage, job id)
    cancelled: List[str] = field(default_factory=list)              # slurm --wait: stuck jobs
    incomplete: Dict[str, List[int]] = field(default_factory=dict)  # stage -> unfinished ranks

    def report(self, plan: CorpusPlan) -> str:
        lines = []
        if self.submitted:
            lines += [f"stage {stage:<16} job {job if job != '-1' else '- (nothing left to run)'}"
                      for stage, job in self.submitted]
            lines.append(f"logs: {stage_dir(plan, '<stage>')}/(logs|slurm_logs)/")
        if self.seconds:
            lines.append("stage seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in self.seconds.items()))
        if self.cancelled:
            lines.append(f"cancelled jobs {', '.join(self.cancelled)}: a stage before them failed")
        if self.incomplete:
            lines.append("unfinished tasks (re-run the same command to run only these): " + "; ".join(
                f"{stage} {ranks}" for stage, ranks in self.incomplete.items()))
        if self.summary:
            lines += [format_table(self.summary),
                      f"-> {plan.output_prefix} ({self.summary['documents']} documents, "
                      f"{self.summary['tokens']} tokens); statistics in {stats_path(plan)}"]
        return "\n".join(lines)


def render_pipeline(plan: CorpusPlan, settings: ExecutorSettings) -> str:
    """--dry-run: the batch scripts of every stage. Nothing is submitted and no plan is saved (a
    real run after it may still change any setting); only the empty log folders are made."""
    settings.check()
    plan.check()
    return render_slurm(plan, build_stages(plan), settings)


def run_pipeline(plan: CorpusPlan, settings: ExecutorSettings) -> PipelineResult:
    settings.check()
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # every task process; torch would spin-wait
    check_manifest(plan.output_prefix, CodeTokenizer(plan.tokenizer_model))
    resumed = prepare_work_dir(plan)
    stages = build_stages(plan)
    result = PipelineResult(complete=False, resumed=resumed)
    if settings.kind == "local":
        result.seconds = run_local(plan, stages, settings)
    else:
        result.submitted = submit_slurm(plan, stages, settings)
        if not settings.wait:
            return result
        result.cancelled = wait_slurm(result.submitted)
    result.incomplete = incomplete_tasks(plan, stages)
    result.complete = not result.incomplete
    if result.complete:
        result.summary = read_summary(stats_path(plan))
    return result
