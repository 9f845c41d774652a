"""The per-machine cache of decoded splits: bit-identical scores with and without it, 8-bit storage, entries
that do not match rebuilt, one writer among racing processes, a killed writer, folders that cannot be
written, and workers of a launch that map what the launcher decoded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

from ct_tune import InputError
from ct_tune.bench import Bench, bench_spec
from ct_tune.data import SplitCache, create_datamodule
from ct_tune.data._cache import SplitWriter

import numpy as np
import pytest
import torch

from tests.conftest import SOURCE_ROOT

# A user package: 8-bit images served as floats (the way ToTensor makes them: k / 255), in a
# LightningDataModule that records every pass over a split (with the process id: workers are processes).
PACKAGE = """
import os
import time

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

LOG = os.path.join(os.path.dirname(__file__), "reads.log")


class Images(Dataset):
    def __init__(self, split, size, count, delay=0.0, normalized=False):
        generator = torch.Generator().manual_seed({"train": 0, "val": 1, "test": 2}[split])
        self.y = torch.arange(count) % 3
        levels = torch.randint(0, 256, (count, 3, size, size), generator=generator, dtype=torch.uint8)
        self.x = levels.div(255) if not normalized else (levels.div(255) - 0.5) / 0.25
        self.x[:, 0] += self.y.view(-1, 1, 1) * 0.0  # labels in the pixels would be too easy; keep it noise
        self.split, self.delay = split, delay

    def __len__(self):
        return len(self.y)

    def __getitem__(self, index):
        if index == 0:
            with open(LOG, "a") as log:
                log.write(f"{os.getpid()} {self.split}\\n")
        time.sleep(self.delay)
        return self.x[index], int(self.y[index])


class Pixels(L.LightningDataModule):
    def __init__(self, size=16, count=24, normalized=False):
        super().__init__()
        self.size, self.count, self.normalized = size, count, normalized
        self.delay = float(os.environ.get("CACHEDATA_DELAY", "0"))  # a slow disk, not another dataset
        self.num_classes = 3

    def _loader(self, split):
        images = Images(split, self.size, self.count, self.delay, self.normalized)
        return DataLoader(images, batch_size=8, shuffle=False)

    def train_dataloader(self):
        return self._loader("train")

    def val_dataloader(self):
        return self._loader("val")

    def test_dataloader(self):
        return self._loader("test")
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    package = tmp_path / "cachedata"
    package.mkdir()
    (package / "__init__.py").write_text(textwrap.dedent(PACKAGE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "cachedata", raising=False)
    yield package
    sys.modules.pop("cachedata", None)


def reads(project: Path) -> list[str]:
    log = project / "reads.log"
    return log.read_text().splitlines() if log.exists() else []


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24x24 RGB PNGs in train/val/test class folders: resized to the model's 32 as 8-bit images."""
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for split, count in (("train", 30), ("val", 18), ("test", 9)):
        for i in range(count):
            folder = root / split / f"class{i % 3}"
            folder.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
            pixels[..., i % 3] //= 2  # a class-dependent tint
            Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def scores(spec) -> tuple[str, list]:
    """(data fingerprint, [(objective, value, per-sample correctness) at ReLU and at beta 0.8])."""
    with Bench.open(spec) as bench:
        evaluator = bench.evaluator("val")
        found = []
        for beta in (1.0, 0.8):
            bench.handle.update(dict.fromkeys(bench.units, beta), c=0.5)
            for name, result in evaluator.evaluate().items():
                found.append((name, result.value, result.correct.tolist()))
        return bench.data.fingerprint, found


def folder_spec(root: Path, cache_dir: Path | None, **run):
    data = {"name": "imagefolder", "data_dir": str(root), "cache": cache_dir is not None}
    if cache_dir is not None:
        data["cache_dir"] = str(cache_dir)
    return bench_spec(
        model={"name": "cifar_resnet_small", "input_size": 32},
        data=data,
        objectives=["accuracy", "probe"],
        run={"device": "cpu", "batch_size": 7, **run},
    )


def test_images_are_stored_in_eight_bits_and_score_bit_identically(image_folder, tmp_path):
    cache = tmp_path / "cache"
    without = scores(folder_spec(image_folder, None))
    cold = scores(folder_spec(image_folder, cache))
    warm = scores(folder_spec(image_folder, cache))
    assert without == cold == warm
    entries = {e.meta["label"]: e for e in SplitCache(cache).entries()}
    assert sorted(entries) == ["imagefolder-train", "imagefolder-val"]  # never the test split
    val = entries["imagefolder-val"]
    assert val.meta["encoding"] == "u8*1/255" and val.meta["shape"] == [18, 3, 32, 32]
    assert (val.folder / "x.bin").stat().st_size == 18 * 3 * 32 * 32  # one byte a value


def test_user_data_keeps_its_encoding_and_fingerprint(project, tmp_path):
    for normalized, encoding in ((False, "u8/255"), (True, "float32")):
        data = {"class_path": "cachedata.Pixels", "init_args": {"normalized": normalized}}
        if normalized:
            data["normalization"] = {"mean": [0.5] * 3, "std": [0.25] * 3}

        def spec(cache: bool, data=data):
            given = {**data, "cache": cache, "cache_dir": str(tmp_path / "cache")}
            run = {"device": "cpu", "batch_size": 5}
            return bench_spec(model={"name": "cifar_resnet_small"}, data=given, objectives=["probe"], run=run)

        assert scores(spec(False)) == scores(spec(True))
        labels = {e.meta["label"]: e.meta["encoding"] for e in SplitCache(tmp_path / "cache").entries()}
        assert labels["Pixels-val"] in (encoding, "u8/255") and encoding in labels.values()


def test_a_split_that_stops_being_eight_bit_is_widened_exactly(tmp_path):
    eight = torch.randint(0, 256, (4, 2, 3, 3), dtype=torch.uint8).div(255)
    other = torch.rand(3, 2, 3, 3)
    writer = SplitWriter(tmp_path)
    writer.append(eight, torch.zeros(4))
    assert writer.encoding == "u8/255"
    writer.append(other, torch.ones(3))
    samples, labels = writer.finish()
    assert samples.encoding == "float32" and labels.tolist() == [0] * 4 + [1] * 3
    assert torch.equal(samples[0:7].view(torch.int32), torch.cat([eight, other]).view(torch.int32))


def test_an_entry_that_does_not_match_its_name_is_rebuilt(tmp_path, caplog):
    cache = tmp_path / "cache"
    data = create_datamodule("digits", cache_dir=cache)
    before, _ = data.tensors("val")
    (entry,) = SplitCache(cache).entries()
    meta = json.loads((entry.folder / "meta.json").read_text())
    meta["descriptor"]["fingerprint"] = "0" * 16  # another split's rows under this split's name
    (entry.folder / "meta.json").write_text(json.dumps(meta))
    again, _ = create_datamodule("digits", cache_dir=cache).tensors("val")
    assert "does not match what it is named for: rebuilding it" in caplog.text
    assert torch.equal(before, again)
    with open(entry.folder / "x.bin", "r+b") as handle:  # a truncated copy
        handle.truncate(100)
    caplog.clear()
    third, _ = create_datamodule("digits", cache_dir=cache).tensors("val")
    assert "rebuilding it" in caplog.text and torch.equal(before, third)


READ_VAL = """
import logging, sys
logging.basicConfig(level=logging.INFO, format="%(message)s")
import ct_tune
from ct_tune.data import SplitCache, UserData, ComponentSpec
data = UserData.from_datamodule(
    ComponentSpec("cachedata.Pixels", {"count": 40}),
    prepare=False, cache=SplitCache(sys.argv[1]),
    known={"val": sys.argv[2]} if len(sys.argv) > 2 else None,
)
x, y = data.samples("val")
print("FINGERPRINT", data.fingerprints["val"], float(x[0:len(x)].double().sum()))
"""


def read_val(project: Path, cache: Path, delay: float, *known: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{SOURCE_ROOT}{os.pathsep}{project.parent}", "CACHEDATA_DELAY": str(delay)}
    args = [sys.executable, "-c", READ_VAL, str(cache), *known]
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_racing_processes_decode_once_and_agree(project, tmp_path):
    cache = tmp_path / "cache"
    first, second = read_val(project, cache, 0.05), read_val(project, cache, 0.05)
    outputs = [process.communicate(timeout=300) for process in (first, second)]
    assert first.returncode == second.returncode == 0, outputs
    lines = [next(line for line in out.splitlines() if line.startswith("FINGERPRINT")) for out, _ in outputs]
    assert lines[0] == lines[1]
    assert sum(err.count("cached Pixels-val") for _, err in outputs) == 1  # one process decoded
    assert [line.split()[1] for line in reads(project)].count("val") == 2  # both read (fresh), one wrote


def test_a_killed_writer_leaves_nothing_that_is_used(project, tmp_path):
    cache = tmp_path / "cache"
    writer = read_val(project, cache, 0.5)
    deadline = time.monotonic() + 120
    while not (any(cache.glob(".Pixels-val-*.tmp-*")) and reads(project)):  # it is writing
        assert writer.poll() is None and time.monotonic() < deadline, "the writer never started writing"
        time.sleep(0.1)
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=60)
    assert SplitCache(cache).entries() == []  # nothing complete
    assert any(cache.glob(".Pixels-val-*.tmp-*"))  # what it left
    done = read_val(project, cache, 0.0)
    out, err = done.communicate(timeout=300)
    assert done.returncode == 0, err
    assert not any(cache.glob(".*.tmp-*"))  # removed by the next writer
    (entry,) = SplitCache(cache).entries()
    assert entry.meta["shape"] == [40, 3, 16, 16]
    fingerprint = out.split()[1]
    trusted = read_val(project, cache, 0.0, fingerprint)  # a worker: maps the entry, reads no loader
    out, err = trusted.communicate(timeout=300)
    assert trusted.returncode == 0 and out.split()[1] == fingerprint, err
    assert "cached Pixels" not in err and len(reads(project)) == 2


def test_a_cache_folder_that_cannot_be_written_is_one_line(tmp_path, cli_fast):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(InputError, match=r"the data cache folder .*a-file/cache is not writable; set data.cache_dir"):
        create_datamodule("digits", cache_dir=blocker / "cache").tensors("val")
    spec = {
        "model": {"name": "cifar_resnet_small"},
        "data": {"name": "digits", "cache_dir": str(blocker / "cache")},
        "budget": {"n_trials": 1},
        "run": {"device": "cpu"},
    }
    (tmp_path / "s.yaml").write_text(json.dumps(spec))
    before = sorted(p.name for p in tmp_path.iterdir())
    result = cli_fast("study", "create", "s.yaml", "--name", "blocked")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "not writable" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no store, no study


FULL_DISK = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))  # the device fills after 20 kB of a file
import ct_tune
from ct_tune.data import create_datamodule
create_datamodule("mnist5k", cache_dir=sys.argv[1]).tensors("train")
"""


def test_a_full_disk_is_one_line_and_leaves_no_partial_entry(tmp_path):
    cache = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": str(SOURCE_ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", FULL_DISK, str(cache)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode != 0
    assert "no space left for the data cache" in done.stderr.splitlines()[-1]
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == []


@pytest.mark.slow
def test_two_workers_map_what_the_launcher_decoded(project, tmp_path, cli):
    """A user DataModule at 224x224: create reads it, the launch reads it once, its two workers read nothing."""
    spec = {
        "model": {"name": "resnet18"},
        "data": {"class_path": "cachedata.Pixels", "init_args": {"size": 224, "count": 6}},
        "objectives": ["probe"],
        "search": {"granularity": "global"},
        "sampler": {"name": "random", "seed": 0},
        "budget": {"n_trials": 2},
        "run": {"device": "cpu"},
    }
    (tmp_path / "s.yaml").write_text(json.dumps(spec))
    env = {"PYTHONPATH": f"{SOURCE_ROOT}{os.pathsep}{tmp_path}", "CT_TUNE_CACHE": str(tmp_path / "cache")}
    created = cli("study", "create", "s.yaml", "--name", "shared", env=env)
    assert created.returncode == 0, created.stderr
    assert len(reads(project)) == 2  # train and val, by create
    started = time.monotonic()
    ran = cli("study", "run", "shared", "--workers", "2", "--oversubscribe", env=env)
    assert ran.returncode == 0, ran.stderr + ran.stdout
    launch_reads = reads(project)[2:]
    assert len(launch_reads) == 2 and len({line.split()[0] for line in launch_reads}) == 1  # the launcher only
    logs = list((tmp_path / "logs" / "shared").glob("*.log"))
    assert len(logs) == 2 and not any("cached Pixels" in log.read_text() for log in logs)
    assert len(SplitCache(tmp_path / "cache").entries()) == 2
    assert time.monotonic() - started < 600


def test_the_cache_command_lists_and_clears(tmp_path, cli_fast):
    cache = tmp_path / "cache"
    create_datamodule("digits", cache_dir=cache).tensors("val")
    listed = cli_fast("cache", "list", "--cache-dir", str(cache), "--json").json()
    (entry,) = listed["entries"]
    assert entry["label"] == "digits-val" and entry["shape"] == [359, 1, 8, 8] and entry["encoding"] == "float32"
    cleared = cli_fast("cache", "clear", "--cache-dir", str(cache), "--json").json()
    assert cleared["removed"] == 1 and SplitCache(cache).entries() == []
    again, _ = create_datamodule("digits", cache_dir=cache).tensors("val")  # rebuilt on the next use
    assert len(again) == 359
