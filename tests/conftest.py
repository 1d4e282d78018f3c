"""Fixtures shared by the test modules (the one place for them: test modules do not import each other).

Tiers: `pytest -m "not slow"` (`make test-fast`) is the fast tier; every test that starts a subprocess
or trains carries the `slow` marker. `slow_guard` below enforces that rule,
so an unmarked test that starts one (or trains) fails instead of silently slowing the fast tier down.
"""
import json
import shutil
import subprocess

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for in-process training runs: on a loaded 2-core machine two threads
    spin-wait (a nano training step took 10 s instead of 0.7 s). Use with
    `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory):
    """module_tmp(name) -> a new folder, removed when the module's tests end. For module-scoped fixtures
    that write checkpoints: kept to the session's end, the suite's checkpoints add up to ~10 GB, more
    than a CI machine may have free (function-scoped `tmp_path` folders go when their test passes,
    by `tmp_path_retention_policy`)."""
    made = []

    def mktemp(name):
        made.append(tmp_path_factory.mktemp(name))
        return made[-1]

    yield mktemp
    for path in made:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True)
def slow_guard(request, monkeypatch):
    """A test without the `slow` marker may neither start a process nor run a training epoch: the fast
    tier's time budget (90 s) holds only while the interpreter and torch are not started again and no
    model is trained. (Module-scoped fixtures set up before this one are not covered.)"""
    if request.node.get_closest_marker("slow") is not None:
        return
    import engine

    def refuse(what):
        raise AssertionError(f"{request.node.nodeid} {what}: mark it pytest.mark.slow")

    class Unmarked(subprocess.Popen):
        def __init__(self, args, *rest, **kwargs):
            refuse(f"starts a process ({args!r})")

    monkeypatch.setattr(subprocess, "Popen", Unmarked)
    monkeypatch.setattr(engine, "train_one_epoch", lambda *args, **kwargs: refuse("trains"))


@pytest.fixture(scope="session")
def generated_set(tmp_path_factory):
    """generated_set(generalized=False, **generator_kwargs) -> root (a Path) of a generated set.

    The generators are deterministic, so each distinct set is written once per session and shared by
    the modules that ask for it: treat it as read-only (copy it to tmp_path before changing a file).
    The generator's summary dict of a root is `generated_set.summaries[root]`."""
    from data import synthetic

    roots = {}

    def make(generalized=False, **kwargs):
        key = (generalized, tuple(sorted(kwargs.items())))
        if key not in roots:
            root = tmp_path_factory.mktemp("gset" if generalized else "synref")
            write = synthetic.generate_generalized if generalized else synthetic.generate
            roots[key] = root
            make.summaries[root] = write(str(root), **kwargs)
        return roots[key]

    make.summaries = {}
    return make


@pytest.fixture(scope="session")
def synref(generated_set):
    """The 40-image SynRef set at 64 px (seed 0) with its refs / instances / sidecar / counterfactuals
    loaded: the set the generator's own tests check."""
    from refer import load_refs_pickle

    root = generated_set(num_images=40, img_size=64, seed=0)
    data_dir = root / "synref"
    meta = json.loads((data_dir / "synthetic_scenes.json").read_text())
    return {
        "root": root, "summary": generated_set.summaries[root], "refs": load_refs_pickle(data_dir / "refs(unc).p"),
        "instances": json.loads((data_dir / "instances.json").read_text()), "meta": meta,
        "counterfactuals": json.loads((data_dir / "counterfactuals(unc).json").read_text()),
        "scenes": {scene["image_id"]: scene for scene in meta["scenes"]},
        "entries": {e["sent_id"]: e for e in meta["expressions"]},
    }
