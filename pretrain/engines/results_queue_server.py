"""The process that serves the results queue of megatron-core's checkpoint writer (see
pretrain/engines/megatron_results_queue.py, which starts it as a script:
`python -I -S results_queue_server.py`, the authkey as a hex line on stdin).

Standard library only, so it starts in milliseconds and holds a few MB (megatron's own server, a
spawned multiprocessing Manager, imports the trainer's main module: torch, megatron, seconds and
hundreds of MB per rank). It prints its address, then serves one queue.Queue until its stdin
reaches end of file: the trainer holds the other end, so the server ends with it, also when the
trainer is killed with SIGKILL. It ignores the stop signals: SLURM sends them to every process of
the job step, and they are the trainer's to act on.
"""

import queue
import signal
import sys
import threading
from multiprocessing.managers import BaseManager

# The trainer's stop and stack-dump signals and Ctrl-C (pretrain/signals.py);
# megatron_results_queue.py blocks the same set while it starts this process.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT)


class ResultsServer(BaseManager):
    pass


def main() -> None:
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    authkey = bytes.fromhex(sys.stdin.readline().strip())
    results = queue.Queue()
    ResultsServer.register("results_queue", callable=lambda: results)
    server = ResultsServer(authkey=authkey).get_server()

    def stop_with_the_trainer():
        sys.stdin.read()  # returns at end of file: the trainer exited or was killed
        server.stop_event.set()  # serve_forever returns, and the socket file is removed

    threading.Thread(target=stop_with_the_trainer, daemon=True).start()
    print(repr(server.address), flush=True)  # a socket path (or a host and port tuple)
    server.serve_forever()


if __name__ == "__main__":
    main()
