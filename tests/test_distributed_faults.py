"""Distributed faults on the CPU (Gloo, 2 ranks, nano model, recorded REFER fixture).

- A rank that dies (SIGKILL) or hangs (SIGSTOP) must not hang its peer: the survivor exits non-zero,
  at the latest after --dist-timeout. The two ranks are started by hand (RANK / WORLD_SIZE / ...),
  without torchrun, whose agent would otherwise stop the survivor itself.
- torchrun --max-restarts 1 with --resume auto: one rank kills itself in the middle of epoch 1, the
  agent restarts both, they continue from checkpoint_last.pth and end with the parameters of an
  uninterrupted run.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from lib.checkpoint_io import load_checkpoint_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE_ROOT = os.path.join(REPO, "tests", "fixtures", "refer_fixture")

pytestmark = pytest.mark.slow


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def base_env(**extra):
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "TOKENIZERS_PARALLELISM": "false",
            **extra}


def train_flags(run_dir, out_dir, epochs, timeout_s=30):
    # 4 train objects, 2 ranks, batch 1: two iterations per epoch on each rank.
    return ["--device", "cpu", "--swin_type", "nano", "--ck_bert", "minilm", "--bert_tokenizer", "minilm",
            "--refer_data_root", FIXTURE_ROOT, "--dataset", "refcoco", "--img_size", "64", "-b", "1",
            "--workers", "0", "--bert-trainable-layers", "1", "--epochs", str(epochs), "--model_id", "d",
            "--run-dir", str(run_dir), "--output-dir", str(out_dir), "--dist-timeout", str(timeout_s)]


def wait_for(condition, timeout_s, procs, logs):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if condition():
            return
        exited = [p.returncode for p in procs if p.poll() is not None]
        assert not exited, f"a rank exited early with {exited}:\n" + tails(logs)
        time.sleep(0.1)
    raise AssertionError(f"condition not reached within {timeout_s} s:\n" + tails(logs))


def tails(logs):
    return "\n".join(f"--- {log.name}\n{log.read_text()[-1500:]}" for log in logs)


@pytest.mark.parametrize("fault, timeout_s", [(signal.SIGKILL, 60), (signal.SIGSTOP, 20)], ids=["SIGKILL", "SIGSTOP"])
def test_surviving_rank_exits_when_its_peer_dies_or_hangs(tmp_path, fault, timeout_s):
    """SIGKILL closes the peer's sockets; SIGSTOP keeps them open, so only the process-group timeout helps."""
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "train.py", *train_flags(run_dir, tmp_path / "out", epochs=500, timeout_s=timeout_s)]
    common = dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE="2")
    procs, logs = [], [tmp_path / f"rank{rank}.err" for rank in (0, 1)]
    try:
        for rank in (0, 1):
            with open(logs[rank], "w") as stderr:
                procs.append(subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr,
                                              env=base_env(RANK=str(rank), LOCAL_RANK=str(rank), **common)))
        log = run_dir / "log.txt"
        wait_for(lambda: log.exists() and "Epoch 1:" in log.read_text(), 240, procs, logs)  # two epochs done
        procs[1].send_signal(fault)
        try:
            procs[0].wait(timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail(f"rank 0 still running 120 s after rank 1 got {fault.name} (--dist-timeout {timeout_s}):\n"
                        + tails(logs))
        assert procs[0].returncode != 0
        stderr = logs[0].read_text().lower()  # torch's wording varies with where rank 0 was waiting
        assert any(word in stderr for word in ("gloo", "timeout", "timed out", "connection")), tails(logs)
        assert "another process of this distributed job failed" in stderr and "--resume auto" in stderr, tails(logs)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()  # SIGKILL also ends a stopped process
            proc.wait()
    # The checkpoint of the last finished epoch is intact.
    assert load_checkpoint_file(run_dir / "checkpoint_last.pth")["epoch"] >= 1


KILL_WRAPPER = textwrap.dedent('''
    """Run train.py; rank 1 SIGKILLs itself at iteration 1 of epoch 1 unless the marker file exists."""
    import os
    import runpy
    import signal
    import sys

    sys.path.insert(0, os.getcwd())
    import engine

    MARKER = sys.argv.pop(1)
    train_one_epoch = engine.train_one_epoch


    class KillAtIteration:
        def __init__(self, loader, iteration):
            self.loader, self.iteration = loader, iteration

        def __len__(self):
            return len(self.loader)

        def __iter__(self):
            for i, batch in enumerate(self.loader):
                if i == self.iteration and not os.path.exists(MARKER):
                    open(MARKER, "w").close()
                    os.kill(os.getpid(), signal.SIGKILL)
                yield batch


    def train_one_epoch_with_fault(model, criterion, data_loader, optimizer, lr_scheduler, device, epoch, **kwargs):
        if epoch == 1 and os.environ["RANK"] == "1":
            data_loader = KillAtIteration(data_loader, 1)
        return train_one_epoch(model, criterion, data_loader, optimizer, lr_scheduler, device, epoch, **kwargs)


    engine.train_one_epoch = train_one_epoch_with_fault
    sys.argv[0] = "train.py"
    runpy.run_path("train.py", run_name="__main__")
''')


def torchrun(script_args, extra=()):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           *extra, *script_args]
    result = subprocess.run(cmd, cwd=REPO, env=base_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"STDOUT\n{result.stdout[-3000:]}\nSTDERR\n{result.stderr[-3000:]}"
    return result


def test_torchrun_restart_resumes_and_matches_uninterrupted_run(tmp_path):
    wrapper, marker = tmp_path / "kill_mid_epoch.py", tmp_path / "killed_once"
    wrapper.write_text(KILL_WRAPPER)
    faulty, clean = tmp_path / "faulty", tmp_path / "clean"
    result = torchrun([str(wrapper), str(marker), *train_flags(faulty / "run", faulty / "out", epochs=3),
                       "--resume", "auto"], extra=["--max-restarts", "1"])
    assert marker.exists(), "rank 1 was never killed"
    assert "Resumed from" in result.stdout and "continuing at epoch 1 of 3" in result.stdout
    assert "Parameters identical on all 2 ranks" in result.stdout
    epochs = [json.loads(line)["epoch"] for line in (faulty / "run" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [0, 1, 2]

    torchrun(["train.py", *train_flags(clean / "run", clean / "out", epochs=3), "--resume", "auto"])
    resumed = load_checkpoint_file(faulty / "run" / "checkpoint_last.pth")
    uninterrupted = load_checkpoint_file(clean / "run" / "checkpoint_last.pth")
    assert resumed["epoch"] == uninterrupted["epoch"] == 2
    for part in ("model", "bert_model"):
        assert resumed[part].keys() == uninterrupted[part].keys()
        for key, value in uninterrupted[part].items():
            torch.testing.assert_close(resumed[part][key], value, atol=1e-6, rtol=0, msg=f"{part}.{key}")
