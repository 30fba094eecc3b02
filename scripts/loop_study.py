"""The loop-count study (issue 29): the report of a grid of runs, from their run folders alone.

    python -m scripts.loop_study report outputs/clp_ablation [--out DIR]   # default: into RUNS_DIR

Reads each run folder's config.yaml and metrics.jsonl under RUNS_DIR (docs/run_folder.md) and
writes report.md, report.json and PNGs: per size x R x arm (clp, noclp, neutral; R=1 shared), the
mean and spread over seeds of the final validation loss, HumanEval NLL, pass@1 and the per-loop
diagnostics; the validation loss at equal tokens and at equal training FLOPs; the study's answers
with whether each exceeds the seed spread; and every missing, unfinished or diverged cell.
Re-running it rewrites the same report. The logic lives in scripts/study/.
"""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.loop_study",
                                     description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    report = commands.add_parser("report", help="write report.md, report.json and plots")
    report.add_argument("runs_dir", metavar="RUNS_DIR", help="the folder holding the grid's runs")
    report.add_argument("--out", help="the report's folder (default: RUNS_DIR)")
    args = parser.parse_args(argv)
    from scripts.study.report import write

    written = write(args.runs_dir, args.runs_dir if args.out is None else args.out)
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    from pretrain.errors import run_tool

    sys.exit(run_tool(main))
