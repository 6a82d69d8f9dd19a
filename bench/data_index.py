"""ImageNet-scale training index: build time, and trial start to first batch against a small set.

    python bench/data_index.py --files 1281167 --classes 1000 --out bench/results/data_index_cpu.md

Builds a synthetic ImageNet-shaped tree (``<root>/n%08d/n%08d_%d.JPEG``, ``--classes`` folders)
of ``--files`` hard links to a few real JPEGs (rendered from the shipped sample crops at
ImageNet's typical 500×375), so it costs directory entries, not data. Then, as a search does:

- **index build**: the driver's :func:`search.experiment.train_index.build_index` (walk the tree, sort,
  write the index into an experiment folder), timed once;
- **trial start to first batch**: with the index in use (``use_train_indexes``, as every
  trial), ``make_train_loader`` (read the index, build the dataset) and its first batch. Runs
  on the big tree and on a 1,000-file tree of the same JPEGs alternate ``--repeats`` times;
  the result is the median of the paired ratios (big ÷ the small run beside it), which
  cancels most of the drift of a shared machine; medians and minima are reported too. Both
  trees go through the large-set path (no header read up front: ``SMALL_SET_FILES`` set to 0
  for the run), so the ratio shows what the index itself costs; the 1,000-file tree's
  default path (every header read, every image decoded into the cache) is reported beside it.

The trees are made under ``--root`` (default: a new folder in /tmp) and removed at the end.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script from anywhere: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

import trainables.data.images as data  # noqa: E402
from search.experiment.store import ExperimentStore  # noqa: E402
from search.experiment.train_index import build_index  # noqa: E402
from trainables.config import DataConfig  # noqa: E402
from trainables.data.file_index import use_train_indexes  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples" / "kodak-crops" / "train"
TARGET = 1.2
MAX_LINKS = 60_000  # ext4 allows 65,000 links to one file: larger trees link to copies


def source_jpegs(folder: Path, count: int) -> list[Path]:
    """``count`` real JPEGs at 500×375 (ImageNet's most common size) from the sample crops."""
    folder.mkdir(parents=True)
    made = []
    for i, png in enumerate(sorted(SAMPLES.glob("*.png"))[:count]):
        path = folder / f"source_{i}.JPEG"
        Image.open(png).convert("RGB").resize((500, 375), Image.Resampling.BICUBIC).save(path, quality=90)
        made.append(path)
    return made


def make_tree(root: Path, sources: list[Path], files: int, classes: int) -> float:
    """``files`` hard links spread over ``classes`` folders; returns the seconds it took."""
    started = time.perf_counter()
    originals = list(sources)
    for i in range(len(sources), -(-files // MAX_LINKS)):  # more files to link to (a few hundred KiB)
        sources.append(originals[0].parent / f"copy_{i}.JPEG")
        shutil.copyfile(originals[i % len(originals)], sources[-1])
    per_class, extra = divmod(files, classes)
    made = 0
    for c in range(classes):
        name = f"n{c:08d}"
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class + (c < extra)):
            os.link(sources[made % len(sources)], folder / f"{name}_{i}.JPEG")
            made += 1
    return time.perf_counter() - started


def first_batch_seconds(train: Path, index: str, crop: int, batch: int) -> float:
    cfg = DataConfig(train=train, eval=train, crop_size=crop, batch_size=batch, num_workers=0)
    with use_train_indexes({str(train): index}):
        started = time.perf_counter()
        stream = data.make_train_loader(cfg, seed=0)
        next(stream)
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=1_281_167, help="entries in the big tree (ImageNet-1k: 1,281,167)")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--small", type=int, default=1000, help="files in the comparison tree")
    parser.add_argument("--sources", type=int, default=8, help="distinct real JPEGs the links point to")
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=31)
    parser.add_argument("--root", type=Path, default=None, help="where to build the trees (removed after)")
    parser.add_argument("--out", type=Path, default=None, help="write the Markdown result here")
    args = parser.parse_args()
    torch.set_num_threads(1)

    root = Path(tempfile.mkdtemp(prefix="lic-data-index-", dir=args.root))
    try:
        sources = source_jpegs(root / "sources", args.sources)
        big, small = root / "imagenet" / "train", root / "small" / "train"
        link_seconds = make_tree(big, sources, args.files, args.classes)
        make_tree(small, sources, args.small, 10)
        print(f"tree: {args.files:,} links in {args.classes} folders made in {link_seconds:.1f} s", flush=True)

        os.system("sync")  # keep write-back of the tree out of the timings
        store = ExperimentStore(root / "results" / "bench")
        store.create()
        big_entry = build_index(store, str(big))
        small_entry = build_index(store, str(small))
        index_bytes = os.path.getsize(f"{store.location}/{big_entry.file}")
        print(f"index build: {big_entry.count:,} files in {big_entry.seconds:.2f} s "
              f"({index_bytes / 2**20:.1f} MiB)", flush=True)
        big_index, small_index = (f"{store.location}/{e.file}" for e in (big_entry, small_entry))

        default_small = [first_batch_seconds(small, small_index, args.crop, args.batch) for _ in range(3)]
        saved = data.SMALL_SET_FILES
        data.SMALL_SET_FILES = 0  # both through the large-set path: what the index costs, no cache
        try:
            big_times, small_times = [], []
            first_batch_seconds(big, big_index, args.crop, args.batch)  # warm the page cache once
            for _ in range(args.repeats):
                big_times.append(first_batch_seconds(big, big_index, args.crop, args.batch))
                small_times.append(first_batch_seconds(small, small_index, args.crop, args.batch))
        finally:
            data.SMALL_SET_FILES = saved
        big_s, small_s = statistics.median(big_times), statistics.median(small_times)
        ratio = statistics.median(b / s for b, s in zip(big_times, small_times))
        best_ratio = min(big_times) / min(small_times)
        print(f"first batch: {big_s * 1000:.1f} ms ({args.files:,}) vs {small_s * 1000:.1f} ms ({args.small:,}): "
              f"paired ratio {ratio:.3f} (target <= {TARGET}); minima ratio {best_ratio:.3f}", flush=True)
    finally:
        started = time.perf_counter()
        shutil.rmtree(root, ignore_errors=True)
        print(f"removed {root} in {time.perf_counter() - started:.1f} s")

    def ms(times: list[float]) -> str:
        return f"{statistics.median(times) * 1000:.1f} ms ({min(times) * 1000:.1f} ms)"

    def runs(times: list[float]) -> str:
        return ", ".join(f"{t * 1000:.1f}" for t in times)

    if args.out:
        command = "python bench/data_index.py " + " ".join(sys.argv[1:])
        args.out.write_text(f"""# Training index at ImageNet scale (CPU)

Measured on the development machine ({os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start, no GPU; Python
{platform.python_version()}, torch {torch.__version__}, 1 torch thread, local disk, warm page cache).

Command: `{command}`

Tree: {args.files:,} hard links in {args.classes:,} class folders (`n%08d/n%08d_%d.JPEG`) to {args.sources} real
JPEGs of 500×375 (rendered from `samples/kodak-crops`; {len(sources)} files with their copies, as ext4 allows
65,000 links a file); comparison tree: {args.small:,} links in 10 folders.

| measure | value |
|---|---|
| index build ({big_entry.count:,} files: walk, sort, write to the experiment folder) | {big_entry.seconds:.2f} s |
| index file size | {index_bytes / 2**20:.1f} MiB |
| trial start → first batch, {args.files:,}-file index: median (minimum) of {args.repeats} | {ms(big_times)} |
| trial start → first batch, {args.small:,}-file index: median (minimum) of {args.repeats} | {ms(small_times)} |
| **ratio: median of the paired ratios (target ≤ {TARGET})** | **{ratio:.3f}** |
| ratio of the medians; of the minima | {big_s / small_s:.3f}; {best_ratio:.3f} |
| for reference: {args.small:,}-file set on its default path (all headers read, all decoded into the cache; \
median of 3) | {statistics.median(default_small) * 1000:.0f} ms |

"Trial start → first batch" is what a trial does before its first step: read the index (memory-mapped),
build the dataset, draw the epoch permutation and decode and crop one batch ({args.batch}×{args.crop}²,
no DataLoader workers). Both sets go through the large-set path (no header read up front), so the
ratio is the cost of the index's size alone. Before the index, every trial start read every header:
124 µs a file here, i.e. about 2.7 minutes for ImageNet on a local disk.
All runs, in order (pairs alternate big, small): {runs(big_times)} ms (big); {runs(small_times)} ms (small).
""")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
