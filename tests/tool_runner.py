"""Running a tool as `python -m X` / `python path/X.py` would, inside one test process (runpy), so
that many invocations share one interpreter start-up. Used by tests/test_usage_docstrings.py
(every usage line parses) and tests/test_user_errors.py (every bad input keeps the exit contract).

A job is {"module": "scripts.X"} or {"path": "scripts/X.py"}, plus "args". Its status is
"exit N" (the tool ended, sys.exit or falling off the end), "raised T: message" (an exception left
the tool: as `python -m X` that is a traceback and exit 1), or whatever `stop_on` names.
"""

import contextlib
import io
import json
import os
import runpy
import sys


def run_as_main(job: dict, stop_on: tuple = ()) -> str:
    """Run one job as `__main__`; `stop_on`: (exception class, status) pairs caught first."""
    sys.argv = [job.get("path") or job["module"], *job["args"]]
    folder = os.path.dirname(os.path.abspath(job["path"])) if job.get("path") else None
    try:
        if folder:
            sys.path.insert(0, folder)
            runpy.run_path(job["path"], run_name="__main__")
        else:
            runpy.run_module(job["module"], run_name="__main__", alter_sys=True)
    except BaseException as error:  # noqa: BLE001 reported as the job's status
        for kind, status in stop_on:
            if isinstance(error, kind):
                return status
        if isinstance(error, SystemExit):
            code = error.code
            if code is None:
                return "exit 0"
            return f"exit {code}" if isinstance(code, int) else f"exit 1 (message: {code})"
        return f"raised {type(error).__name__}: {error}"
    finally:
        if folder:
            sys.path.remove(folder)
    return "exit 0"


def run_jobs(jobs: list, stop_on: tuple = (), keep: int = 4000) -> list:
    """Run each job with its stdout and stderr captured: [{id, args, status, output}]."""
    results = []
    for job in jobs:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            status = run_as_main(job, stop_on)
        results.append(dict(id=job["id"], args=job["args"], status=status,
                            output=out.getvalue()[-keep:]))
    return results


def child() -> None:
    """`python -c 'from tests.tool_runner import child; child()'`: the jobs on stdin, one JSON
    list of results as the last line of stdout."""
    results = run_jobs(json.load(sys.stdin))
    print(json.dumps(results))
