"""`run_pipeline(plan, settings)`: prepare (or resume) the work folder, then run or submit the stages.

Before anything runs: the plan is checked against the work folder's (a resume must not mix
settings), and the output prefix's existing manifest, if any, against the tokenizer (as
scripts/preprocess.py does: shards of another tokenizer are never mixed in silently). One process
at a time runs the pipeline of an output prefix (output_lock.py). A run that kept no document is
a data error naming why (the statistics' reasons), not an empty output.
"""

import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from data.curation.executors import (
    ExecutorSettings, incomplete_tasks, render_slurm, run_local, submit_slurm, wait_slurm,
)
from data.curation.output_lock import output_lock
from data.curation.plan import CorpusPlan, prepare_work_dir, stage_dir
from data.curation.shards import stats_path
from data.curation.stages import build_stages
from data.curation.stats import format_table, read_summary
from data.errors import CorpusError
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
    with output_lock(plan.output_prefix):
        result = _run_locked(plan, settings)
    if result.summary is not None and not result.summary["documents"]:
        raise CorpusError(_nothing_kept(plan, result.summary))
    return result


def _nothing_kept(plan: CorpusPlan, summary: Dict) -> str:
    removed = ", ".join(f"{reason} {count}" for reason, count in summary["removed"].items() if count)
    named = "; ".join(f"{entry['file']}: {entry['detail']}" for entry in summary.get("skipped", [])[:3])
    return (f"every document of --input {' '.join(spec.spec for spec in plan.inputs)} was removed "
            f"({removed or 'no documents were read'}{'; e.g. ' + named if named else ''}), nothing "
            f"was written to {plan.output_prefix}. See {stats_path(plan)} for every reason; "
            f"{_fix(summary['removed'])}; then delete {plan.work_dir} and re-run")


def _fix(removed: Dict) -> str:
    if removed.get("no_text") or removed.get("no_text_column"):
        return "name the text column with --text-key"
    return "give inputs with source files of --extensions, or loosen the filters"


def _run_locked(plan: CorpusPlan, settings: ExecutorSettings) -> PipelineResult:
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
