"""What a latency depends on besides the code: thread count, machine load, date. Shared by the benches.

On a machine where other jobs keep cores busy, PyTorch's default intra-op pool (one thread per
core) spin-waits for the busy cores: a nano forward took 1.59 s instead of 0.026 s on a loaded
2-core machine. `--threads N` fixes the pool (torch.set_num_threads and OMP_NUM_THREADS, which
child processes inherit) so that numbers from different days compare.
"""
import os
import time

import torch


def add_threads_argument(parser):
    parser.add_argument("--threads", type=int, default=0,
                        help="intra-op threads of PyTorch (and onnxruntime, and child processes); 0: the "
                             "libraries' default, one per core, which spin-waits when other jobs hold cores")


def apply_threads(threads):
    if threads > 0:
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)


def machine_line(threads):
    """One line to print above a table: date, threads, load average, CPUs."""
    one, five, fifteen = os.getloadavg()
    return (f"{time.strftime('%Y-%m-%d %H:%M')}; threads {torch.get_num_threads()} (--threads {threads or 'default'}); "
            f"load average {one:.2f} {five:.2f} {fifteen:.2f} (1/5/15 min); {os.cpu_count()} CPUs")
