"""Training data of any layout: ImageNet-shaped trees and list files, the search's index (built
once by the driver, read by every trial, reused on resume), lazy large sets with counted,
deterministic skips, and what `validate` reports about the data."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import trainables.data.file_index as file_index
import trainables.data.images as data_module
from search.errors import SpaceError
from search.experiment.store import ExperimentStore
from search.experiment.train_index import MANIFEST, prepare_train_indexes
from search.space.training_data import SkippedImages, check_training_data, skipped_images
from tests.conftest import SAMPLES, tiny_trial
from trainables import metrics as M
from trainables.config import DataConfig, TrialConfig
from trainables.data.file_index import (
    TrainingFiles,
    list_training_files,
    load_index,
    remembered_walks,
    training_files,
    use_train_indexes,
    walk_images,
)
from trainables.data.images import LazyImages, SkippedImagesWarning, make_train_loader, open_training_images
from trainables.errors import DataError

CLASSES = ("n01440764", "n01443537", "n01484850")
PER_CLASS = 4
BROKEN = ("n01443537/n01443537_broken.JPEG", "n01484850/n01484850_truncated.JPEG")


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def imagenet_tree(root: Path, size: tuple[int, int] = (72, 56)) -> list[str]:
    """``root/<class>/*.JPEG`` with two broken files, a nested folder, hidden and non-image files.
    Returns the relative names a walk must find (sorted)."""
    rng = np.random.default_rng(0)
    names = []
    for c, cls in enumerate(CLASSES):
        (root / cls).mkdir(parents=True)
        for i in range(PER_CLASS):
            name = f"{cls}/{cls}_{i}.JPEG"
            Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(root / name, quality=90)
            names.append(name)
    (root / BROKEN[0]).write_text("not a JPEG at all")
    good = (root / names[0]).read_bytes()
    (root / BROKEN[1]).write_bytes(good[: len(good) // 2])
    (root / CLASSES[0] / "extra").mkdir()
    deep = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(deep).save(root / CLASSES[0] / "extra" / "deep.png")
    names += list(BROKEN) + [f"{CLASSES[0]}/extra/deep.png"]
    # ignored: hidden files and folders, non-image files
    (root / ".DS_Store").write_bytes(b"\0\1")
    (root / CLASSES[1] / "._n01443537_0.JPEG").write_bytes(b"resource fork")
    (root / ".cache").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / ".cache" / "thumb.png")
    (root / "LOC_synset_mapping.txt").write_text("n01440764 tench\n")
    (root / CLASSES[2] / "labels.csv").write_text("a,b\n")
    return sorted(names)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "imagenet" / "train"
    imagenet_tree(root)
    return root


# ------------------------------------------------------------------- finding files
def test_walk_finds_images_at_any_depth_ignoring_hidden_and_non_images(tmp_path: Path):
    expected = imagenet_tree(tmp_path / "train")
    assert walk_images(tmp_path / "train") == expected
    files = list_training_files(tmp_path / "train")
    assert len(files) == 15 and [files.name(i) for i in range(len(files))] == expected
    assert files.path(0) == str(tmp_path / "train" / expected[0])


def test_walk_follows_folder_links_without_looping(tmp_path: Path):
    root = tmp_path / "train"
    (root / "a").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "a" / "x.png")
    os.symlink(root, root / "a" / "loop")  # a cycle back to the root
    os.symlink(root / "a", root / "b")  # a second way into a
    names = walk_images(root)
    assert "a/x.png" in names and len(names) <= 2  # every real folder listed once, no endless loop


def test_list_file_paths_are_relative_to_its_folder(tmp_path: Path, tree: Path):
    listing = tmp_path / "subset.txt"
    absolute = tree / CLASSES[2] / f"{CLASSES[2]}_0.JPEG"
    listing.write_text(f"# a fixed subset\nimagenet/train/{CLASSES[0]}/{CLASSES[0]}_1.JPEG\n\n{absolute}\n")
    files = list_training_files(listing)
    assert [Path(p) for p in files.paths()] == [tree / CLASSES[0] / f"{CLASSES[0]}_1.JPEG", absolute]
    images = open_training_images(DataConfig(train=listing, eval=SAMPLES / "eval"))
    assert len(images) == 2 and images[1].shape == (56, 72, 3)


def test_missing_empty_and_hidden_only_sources_are_data_errors(tmp_path: Path):
    with pytest.raises(DataError, match="does not exist"):
        list_training_files(tmp_path / "nope")
    (tmp_path / "empty" / ".hidden").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "empty" / ".hidden" / "x.png")
    with pytest.raises(DataError, match="holds no image files, at any depth"):
        list_training_files(tmp_path / "empty")
    (tmp_path / "list.txt").write_text("# nothing\n\n")
    with pytest.raises(DataError, match="lists no image path"):
        list_training_files(tmp_path / "list.txt")


# ----------------------------------------------------------------------- the index
def test_index_round_trip_is_memory_mapped_and_checked(tmp_path: Path, tree: Path):
    files = list_training_files(tree)
    (tmp_path / "train.idx").write_bytes(files.to_bytes())
    loaded = load_index(str(tmp_path / "train.idx"))
    assert len(loaded) == len(files) and loaded.root == str(tree) and loaded.source == str(tree)
    assert [loaded.name(i) for i in range(len(loaded))] == walk_images(tree)
    assert load_index(f"file://{tmp_path / 'train.idx'}").name(3) == files.name(3)
    (tmp_path / "cut.idx").write_bytes(files.to_bytes()[:-5])
    with pytest.raises(DataError, match="truncated"):
        load_index(str(tmp_path / "cut.idx"))
    (tmp_path / "other.idx").write_text("hello")
    with pytest.raises(DataError, match="not a lic-search training index"):
        load_index(str(tmp_path / "other.idx"))
    with pytest.raises(DataError, match="cannot read training index"):
        load_index(str(tmp_path / "absent.idx"))


def test_empty_name_list_round_trips():
    files = TrainingFiles.from_names("/x", [], "/x")
    assert len(TrainingFiles.from_buffer(files.to_bytes(), "mem")) == 0


def _space(folder: Path, train: Path, **data) -> Path:
    trial = tiny_trial(**{f"data.{k}": v for k, v in data.items()})
    trial["data"]["train"] = str(train)
    trial["model"]["auxt"]["enabled"] = False
    path = folder / "space.yaml"
    path.write_text(yaml.safe_dump({"name": "tree", "trial": trial, "scheduler": {"type": "fifo"}}))
    return path


class _Spy:
    """Counts directory walks (os.scandir) and index reads while installed."""

    def __init__(self, monkeypatch):
        self.scans = 0
        self.index_reads = 0
        real_scandir, real_load = os.scandir, file_index.load_index

        def scandir(*args, **kwargs):
            self.scans += 1
            return real_scandir(*args, **kwargs)

        def load(location):
            self.index_reads += 1
            return real_load(location)

        monkeypatch.setattr(file_index.os, "scandir", scandir)
        monkeypatch.setattr(file_index, "load_index", load)


def test_driver_builds_the_index_once_and_a_resume_reuses_it(tmp_path: Path, tree: Path, monkeypatch):
    from search.space import load_space

    spec = load_space(_space(tmp_path, tree), check_data=False)
    store = ExperimentStore(tmp_path / "results" / "tree")
    store.create()
    indexes = prepare_train_indexes(spec, store)
    assert list(indexes) == [str(tree)] and store.exists(MANIFEST)
    first = load_index(indexes[str(tree)])
    assert len(first) == 15
    # Files added later do not change a resumed search's list, and nothing is walked again.
    Image.fromarray(np.zeros((60, 60, 3), np.uint8)).save(tree / CLASSES[0] / "added_later.JPEG")
    spy = _Spy(monkeypatch)
    again = prepare_train_indexes(spec, store)
    assert again == indexes and spy.scans == 0
    assert len(load_index(again[str(tree)])) == 15


def test_validation_walk_is_reused_for_the_index(tmp_path: Path, tree: Path, monkeypatch):
    from search.space import load_space

    spy = _Spy(monkeypatch)
    with remembered_walks():
        spec = load_space(_space(tmp_path, tree))
        walked = spy.scans
        store = ExperimentStore(tmp_path / "results" / "tree")
        store.create()
        prepare_train_indexes(spec, store)
    assert walked == 5 and spy.scans == walked  # root, 3 classes and extra/ (.cache skipped), once


def test_trial_start_and_restore_read_the_index_and_never_walk(tmp_path: Path, tree: Path, monkeypatch):
    """What a trial does on start, retry and restore: Trainer from the config, loader from the index."""
    from search.space import load_space
    from trainables.training.engine import Trainer

    spec = load_space(_space(tmp_path, tree), check_data=False)
    store = ExperimentStore(tmp_path / "results" / "tree")
    store.create()
    indexes = prepare_train_indexes(spec, store)
    config = TrialConfig.model_validate(next(iter(spec.configs())))
    spy = _Spy(monkeypatch)
    monkeypatch.setattr(file_index, "walk_images", lambda root: pytest.fail(f"walked {root} in a trial"))
    with use_train_indexes(indexes), warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedImagesWarning)
        first = Trainer(config)
        results = first.train()
        before = next(results)  # iteration 3 of 6
        state = first.state_dict()
        restored = Trainer(config)
        restored.load_state_dict(state)
        after = list(restored.train())
    assert spy.scans == 0 and spy.index_reads == 2
    assert before[M.ITERATIONS] == 3 and after[-1][M.ITERATIONS] == 6
    # 15 files listed; the non-JPEG fails its header and the truncated one its decode (small set: up front)
    for result in (before, after[-1]):
        assert result[M.DATA_TRAIN_IMAGES] == 15 and result[M.DATA_SKIPPED_IMAGES] == 2


# ------------------------------------------------------------------ large sets
@pytest.fixture
def large(monkeypatch, tree: Path) -> Path:
    """The tree counts as a large set: nothing read up front."""
    monkeypatch.setattr(data_module, "SMALL_SET_FILES", 4)
    return tree


def test_large_set_reads_no_header_up_front(large: Path, monkeypatch):
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    images = open_training_images(DataConfig(train=large, eval=SAMPLES / "eval"))
    assert isinstance(images, LazyImages) and len(images) == 15 and opened == []
    assert isinstance(open_training_images(DataConfig(train=large, eval=SAMPLES / "eval", cache="always")),
                      data_module.ImageSet)  # cache: always still decodes everything up front


@pytest.mark.parametrize("workers", [0, 2])
def test_large_set_skips_broken_files_deterministically_and_counts_them(large: Path, workers: int):
    cfg = DataConfig(train=large, eval=SAMPLES / "eval", crop_size=32, batch_size=3, num_workers=workers)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedImagesWarning)
        stream = make_train_loader(cfg, seed=5)
        batches = [next(stream) for _ in range(10)]  # 30 samples: two epochs of 15 files
        metrics = stream.data_metrics()
        named = metrics.pop(M.SKIPPED_FILES).splitlines()  # the files, each with why it could not be read
        assert metrics == {M.DATA_TRAIN_IMAGES: 15.0, M.DATA_SKIPPED_IMAGES: 2.0}
        assert sorted(line.split("\t")[0] for line in named) == sorted(str(large / name) for name in BROKEN)
        assert all(line.split("\t")[1] for line in named)
        assert M.SKIPPED_FILES not in stream.data_metrics()  # named once, until more are found
        resumed = make_train_loader(cfg, seed=5, start_iteration=6)
        assert all(torch.equal(next(resumed), batches[k]) for k in range(6, 10))
        serial = make_train_loader(cfg.model_copy(update={"num_workers": 0}), seed=5)
        assert all(torch.equal(next(serial), b) for b in batches)  # same crops with any worker count
    assert all(b.shape == (3, 3, 32, 32) for b in batches)


def test_a_broken_file_is_replaced_by_the_next_readable_one(large: Path):
    files = list_training_files(large)
    crops = data_module.TrainCrops(LazyImages(files), crop=32, small_images="pad", seed=0)
    broken = [i for i in range(len(files)) if files.name(i) in BROKEN]
    with pytest.warns(SkippedImagesWarning, match="broken.JPEG"):
        image = crops._image(broken[0])
    assert np.array_equal(image, data_module.load_rgb8(Path(files.path(broken[0] + 1))))
    _, found = crops.item(0)
    assert found == ()  # already known: not counted twice


# ------------------------------------------------------------- validate and summaries
def _kodak(folder: Path) -> Path:
    folder.mkdir()
    for i in range(1, 25):
        Image.fromarray(np.full((16, 24, 3), i, np.uint8)).save(folder / f"kodim{i:02d}.png")
    return folder


def test_validate_reports_image_counts_and_the_kodak_set(tmp_path: Path, tree: Path, capsys):
    from search.cli import main

    space = _space(tmp_path, tree, eval=str(_kodak(tmp_path / "kodak")))
    assert main(["validate", str(space)]) == 0
    out = capsys.readouterr().out
    assert f"training images: 15 in {tree} (folder, searched recursively; largest image side 72 px " \
           "(all headers, 1 unreadable))" in out
    assert f"evaluation images: 24 in {tmp_path / 'kodak'} (the 24-image Kodak set)" in out


def test_crop_size_beyond_twice_the_largest_image_is_a_validation_error(tmp_path: Path, tree: Path):
    from search.space import load_space

    load_space(_space(tmp_path, tree, crop_size=144))  # exactly twice 72: allowed (padding)
    with pytest.raises(SpaceError) as caught:
        load_space(_space(tmp_path, tree, crop_size=20000))
    assert caught.value.key_path == "trial.data.crop_size"
    assert "20000 is more than twice the largest training image side found, 72 px" in str(caught.value)
    assert "all headers read" in str(caught.value)


def test_large_sets_size_check_reads_a_bounded_sample_of_headers(tree: Path, monkeypatch):
    import search.space.training_data as training_data

    monkeypatch.setattr(training_data, "SMALL_SET_FILES", 4)
    monkeypatch.setattr(training_data, "HEADER_SAMPLE", 5)
    opened = []
    real_open = Image.open
    monkeypatch.setattr(training_data.Image, "open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    (summary,) = check_training_data("s.yaml", [DataConfig(train=tree, eval=SAMPLES / "eval", crop_size=64)])
    assert len(opened) == 5 and summary.headers.tried == 5 and summary.train_images == 15
    with pytest.raises(SpaceError, match="headers of 5 of 15 files sampled"):
        check_training_data("s.yaml", [DataConfig(train=tree, eval=SAMPLES / "eval", crop_size=145)])


def test_skipped_images_summary_per_trial_and_total():
    class Result:
        def __init__(self, trial, skipped):
            self.metrics = {"trial_id": trial, M.DATA_SKIPPED_IMAGES: skipped, M.DATA_TRAIN_IMAGES: 1281167.0}

    summary = skipped_images([Result("a", 2.0), Result("b", 0.0), Result("c", 3.0)])
    assert summary.per_trial == {"a": 2, "b": 0, "c": 3} and summary.total == 5
    assert summary.describe() == ("training images listed: 1,281,167; unreadable training images skipped: 5 in "
                                  "total over 2 trial(s) (most: 3 in c)")
    assert SkippedImages({"a": 0}).describe() == "unreadable training images skipped: none"


def test_training_files_without_an_index_walks(tree: Path):
    with use_train_indexes({"/elsewhere": "/nonexistent.idx"}):
        assert len(training_files(tree)) == 15


# ------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_search_on_an_imagenet_shaped_tree_reports_images_used_and_skipped(tmp_path: Path, tree: Path, capsys):
    import ray

    from search.cli import main
    from search.tracking.client import client_for

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    space = _space(tmp_path, tree)
    try:
        assert main(["run", str(space), "--storage-path", str(tmp_path / "results"), "--tracking-uri", uri]) == 0
    finally:
        ray.shutdown()
    out = capsys.readouterr().out
    assert "training images listed: 15; unreadable training images skipped: 2 in total over 1 trial(s)" in out
    folder = tmp_path / "results" / "tree"
    assert f"unreadable training files: {tree}/" in out and f"full lists: {folder}/skipped_images/<trial>.txt" in out
    (listed,) = (folder / "skipped_images").glob("*.txt")
    assert sorted(line.split("\t")[0] for line in listed.read_text().splitlines()) == sorted(
        str(tree / name) for name in BROKEN)
    assert (tmp_path / "results" / "tree" / MANIFEST).is_file()
    client = client_for(uri)
    experiment = client.get_experiment_by_name("tree")
    (run,) = [r for r in client.search_runs([experiment.experiment_id]) if M.DATA_SKIPPED_IMAGES in r.data.metrics]
    assert run.data.metrics[M.DATA_TRAIN_IMAGES] == 15 and run.data.metrics[M.DATA_SKIPPED_IMAGES] == 2
    assert [m.step for m in client.get_metric_history(run.info.run_id, M.DATA_SKIPPED_IMAGES)] == [3, 6]
    artifact = Path(client.download_artifacts(run.info.run_id, "skipped_images.txt", str(tmp_path)))
    assert artifact.read_text() == listed.read_text().rstrip("\n")


@pytest.mark.parametrize("count", [1, 2, 3, 5, 64, 65, 1000, 4097])
def test_epoch_permutation_is_a_seeded_bijection(count: int):
    from trainables.data.images import EpochPermutation

    order = [EpochPermutation(count, 11)(i) for i in range(count)]
    assert sorted(order) == list(range(count))
    assert order == [EpochPermutation(count, 11)(i) for i in range(count)]
    if count >= 64:
        assert order != [EpochPermutation(count, 12)(i) for i in range(count)] and order != sorted(order)


def test_status_and_summary_name_the_first_skipped_files_and_where_the_lists_are(tmp_path: Path):
    from search.experiment import skipped
    from search.experiment.store import ExperimentStore

    store = ExperimentStore(tmp_path / "search")
    assert skipped.describe(store) is None
    skipped.record(store, "t1", "/data/a.jpg\tOSError: truncated\n/data/b.jpg\tUnidentifiedImageError: x")
    skipped.record(store, "t2", "/data/b.jpg\tUnidentifiedImageError: x\n/data/c.jpg\tOSError: y\n/data/d.jpg\tz")
    assert skipped.describe(store) == (
        "unreadable training files: /data/a.jpg (OSError: truncated); /data/b.jpg (UnidentifiedImageError: x); "
        f"/data/c.jpg (OSError: y) and 1 more; full lists: {store.location}/skipped_images/<trial>.txt "
        "(and each trial's MLflow artifact skipped_images.txt)")
