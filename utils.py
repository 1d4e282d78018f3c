"""Distributed helpers, logging and small utilities shared by the scripts.

`init_distributed_mode` reads RANK / WORLD_SIZE / LOCAL_RANK from the environment (set by
torchrun and by `python -m torch.distributed.launch`); without them the run is a single process
with no process group. `SmoothedValue` / `MetricLogger` follow torchvision's reference scripts.
"""
import builtins
import datetime
import os
import random
import sys
import time
from collections import defaultdict, deque

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

# --------------------------------------------------------------------------- distributed

def is_dist_avail_and_initialized():
    return dist.is_available() and dist.is_initialized()


def get_world_size():
    return dist.get_world_size() if is_dist_avail_and_initialized() else 1


def get_rank():
    return dist.get_rank() if is_dist_avail_and_initialized() else 0


def is_main_process():
    return get_rank() == 0


def setup_for_distributed(is_master):
    """Silence print() on every rank but 0 (print(..., force=True) still prints)."""
    builtin_print = builtins.print

    def print_(*args, **kwargs):
        force = kwargs.pop("force", False)
        if is_master or force:
            builtin_print(*args, **kwargs)

    builtins.print = print_


def init_distributed_mode(device, timeout_s=600):
    """Join the process group when launched by torchrun / torch.distributed.launch.

    Returns (rank, world_size, device). The device becomes cuda:LOCAL_RANK on GPUs. NCCL is used on
    CUDA, Gloo on the CPU; the timeout bounds how long a rank waits for a dead peer.
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1, device
    rank = int(os.environ["RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    timeout = datetime.timedelta(seconds=timeout_s)
    dist.init_process_group(backend=backend, rank=rank, world_size=world_size, timeout=timeout,
                            store=_restart_safe_store(world_size, timeout))
    setup_for_distributed(rank == 0)
    print(f"| distributed init (rank {rank}/{world_size}, backend {backend}, device {device})", force=True)
    return rank, world_size, device


def _restart_safe_store(world_size, timeout):
    """A store of its own for each torchrun restart of a single-node job; None (env://) otherwise.

    torchrun keeps its TCPStore across worker restarts (torch 2.14), so the restarted ranks can read
    the previous attempt's addresses and fail to connect to dead peers ("Gloo connectFullMesh failed").
    A key prefix per restart separates the attempts. Restart counts are only consistent within one
    agent, hence single-node jobs only.
    """
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if attempt is None or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" \
            or os.environ.get("GROUP_WORLD_SIZE") != "1":
        return None
    client = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size,
                           is_master=False, timeout=timeout)
    return dist.PrefixStore(f"attempt_{attempt}", client)


def cleanup_distributed():
    if is_dist_avail_and_initialized():
        dist.destroy_process_group()


def barrier():
    if is_dist_avail_and_initialized():
        dist.barrier()


def all_reduce_sum(tensor):
    """In-place sum over ranks; a no-op in a single process."""
    if is_dist_avail_and_initialized():
        dist.all_reduce(tensor)
    return tensor


def all_gather_object(obj):
    """List of `obj` from every rank (a one-element list in a single process)."""
    if not is_dist_avail_and_initialized():
        return [obj]
    gathered = [None] * get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def check_parameters_in_sync(model):
    """Raise unless every rank holds bit-identical parameters (a DDP sanity check, one all_gather)."""
    if not is_dist_avail_and_initialized():
        return
    checksum = torch.stack([p.detach().double().sum() for p in model.parameters()]).cpu()
    sums = all_gather_object(checksum)
    if not all(torch.equal(sums[0], other) for other in sums[1:]):
        raise RuntimeError("Parameters differ between ranks after training: the distributed run is out of sync.")
    print(f"Parameters identical on all {len(sums)} ranks.")


def seed_everything(seed):
    """Seed Python, NumPy and torch; the data pipeline draws sentences with NumPy."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_worker(worker_id):
    """DataLoader worker_init_fn: derive NumPy's seed from the worker's torch seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


# --------------------------------------------------------------------------- logging

class SmoothedValue:
    """Track a series of values; report the median/average over a window and the global average."""

    def __init__(self, window_size=20, fmt="{median:.4f} ({global_avg:.4f})"):
        self.deque = deque(maxlen=window_size)
        self.total = 0.0
        self.count = 0
        self.fmt = fmt

    def update(self, value, n=1):
        self.deque.append(value)
        self.count += n
        self.total += value * n

    def synchronize_between_processes(self):
        """Sum count and total over ranks (the window stays local)."""
        if not is_dist_avail_and_initialized():
            return
        t = torch.tensor([self.count, self.total], dtype=torch.float64)
        all_reduce_sum(t)
        self.count = int(t[0].item())
        self.total = t[1].item()

    @property
    def median(self):
        return float(np.median(self.deque)) if self.deque else 0.0

    @property
    def avg(self):
        return float(np.mean(self.deque)) if self.deque else 0.0

    @property
    def global_avg(self):
        return self.total / max(self.count, 1)

    @property
    def value(self):
        return self.deque[-1] if self.deque else 0.0

    def __str__(self):
        return self.fmt.format(median=self.median, avg=self.avg, global_avg=self.global_avg, value=self.value)


class MetricLogger:
    """Collect SmoothedValues and print them every `print_freq` iterations of an iterable."""

    def __init__(self, delimiter="  ", log_file=None):
        self.meters = defaultdict(SmoothedValue)
        self.delimiter = delimiter
        self.log_file = log_file

    def update(self, **kwargs):
        for name, value in kwargs.items():
            if isinstance(value, torch.Tensor):
                value = value.item()
            self.meters[name].update(float(value))

    def add_meter(self, name, meter):
        self.meters[name] = meter

    def __str__(self):
        return self.delimiter.join(f"{name}: {meter}" for name, meter in self.meters.items())

    def synchronize_between_processes(self):
        for meter in self.meters.values():
            meter.synchronize_between_processes()

    def log(self, message):
        print(message)
        if self.log_file is not None and is_main_process():
            with open(self.log_file, "a") as handle:
                handle.write(message + "\n")

    def log_every(self, iterable, print_freq, header="", total=None):
        start = time.time()
        end = start
        iter_time = SmoothedValue(fmt="{avg:.4f}")
        data_time = SmoothedValue(fmt="{avg:.4f}")
        total = len(iterable) if total is None else total
        width = len(str(total))
        # A bar only on an interactive terminal: in piped output it would interleave with the log lines.
        bar = tqdm(iterable, desc=header.rstrip(":"), total=total, leave=False, dynamic_ncols=True,
                   disable=not (is_main_process() and sys.stderr.isatty()), mininterval=1.0)
        for i, obj in enumerate(bar):
            data_time.update(time.time() - end)
            yield obj
            iter_time.update(time.time() - end)
            if i % print_freq == 0 or i == total - 1:
                eta = datetime.timedelta(seconds=int(iter_time.global_avg * (total - i - 1)))
                bar.clear()
                self.log(f"{header} [{i:{width}d}/{total}]  eta: {eta}  {self}  "
                         f"time: {iter_time}  data: {data_time}")
            end = time.time()
        elapsed = datetime.timedelta(seconds=int(time.time() - start))
        self.log(f"{header} total time: {elapsed} ({(time.time() - start) / max(total, 1):.4f} s / it)")


class ShardSampler(torch.utils.data.Sampler):
    """Indices rank, rank + world, ... : every sample exactly once over all ranks, no padding.

    (DistributedSampler pads the last shard with repeated samples, which would skew metrics.)
    """

    def __init__(self, num_samples, rank=None, world_size=None):
        self.num_samples = num_samples
        self.rank = get_rank() if rank is None else rank
        self.world_size = get_world_size() if world_size is None else world_size

    def __iter__(self):
        return iter(range(self.rank, self.num_samples, self.world_size))

    def __len__(self):
        return len(range(self.rank, self.num_samples, self.world_size))
