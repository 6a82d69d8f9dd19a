"""`lic-search slurm SPACE.yaml`: write (and with --submit, submit) the sbatch script that runs a search
across as many Slurm jobs as it takes (search/tuning/slurm.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from search.errors import LicSearchError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "slurm", help="write (or submit) an sbatch script that runs a search across requeued Slurm jobs",
        description="Prints an sbatch script: Ray started on the job's nodes (Ray's Slurm guide), `lic-search run "
                    "SPACE --resume-if-exists` on them, the end-of-job signal passed to the driver (it checkpoints "
                    "every running trial and exits 75) and the job requeued until the search finishes.")
    parser.add_argument("space", type=Path, help="search-space YAML file")
    parser.add_argument("--nodes", type=int, default=1, help="nodes per job (default: %(default)s)")
    parser.add_argument("--gpus-per-node", type=int, default=0, help="GPUs per node (default: %(default)s)")
    parser.add_argument("--cpus-per-node", type=int, default=None,
                        help="CPUs per node (default: what the trials that fit a node's GPUs need; one trial's "
                             "CPUs on GPU-less nodes)")
    parser.add_argument("--time", default="24:00:00", help="time limit of each job (default: %(default)s)")
    parser.add_argument("--partition", default=None)
    parser.add_argument("--account", default=None)
    parser.add_argument("--signal-seconds", type=int, default=120, dest="warning_seconds",
                        help="Slurm signals the job this many seconds before its time limit (default: %(default)s)")
    parser.add_argument("--storage-path", default="lic_search_results",
                        help="where the search keeps its results: a folder every node sees, or s3://... "
                             "(default: ./%(default)s, made absolute)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI every node reaches (default: sqlite store ./mlflow.db, absolute)")
    parser.add_argument("--output", type=Path, default=None, metavar="SCRIPT",
                        help="write the script here (default: print it; with --submit: lic-<name>.sbatch)")
    parser.add_argument("--submit", action="store_true", help="submit the script with sbatch")
    parser.set_defaults(func=_slurm)


def _slurm(args) -> int:
    from search.space import load_space
    from search.tuning.slurm import JobShape, sbatch_script

    spec = load_space(args.space, check_data=False)  # the data may be on the cluster only: `run` checks it there
    shape = JobShape(nodes=args.nodes, gpus_per_node=args.gpus_per_node, cpus_per_node=args.cpus_per_node,
                     time=args.time, partition=args.partition, account=args.account,
                     warning_seconds=args.warning_seconds, storage_path=args.storage_path,
                     tracking_uri=args.tracking_uri)
    script = sbatch_script(spec, args.space, shape)
    if "://" not in str(args.storage_path) or not args.tracking_uri or args.tracking_uri.startswith("sqlite:"):
        # Stderr, so a printed script stays clean: a requeued job may start on other nodes than the last one.
        print("note: the storage path and the MLflow store must be on a filesystem every node of every job mounts "
              "(or use --storage-path s3://... and --tracking-uri http://<mlflow server>)", file=sys.stderr)
    output = args.output or (Path(f"lic-{spec.name}.sbatch") if args.submit else None)
    if output is None:
        print(script, end="")
        return 0
    output.write_text(script)
    print(f"wrote {output}")
    if args.submit:
        try:
            submitted = subprocess.run(["sbatch", str(output)], capture_output=True, text=True, check=False)
        except FileNotFoundError:
            raise LicSearchError("--submit: sbatch not found on this machine (the script is written: submit it "
                                 f"where Slurm is: sbatch {output})") from None
        if submitted.returncode != 0:
            raise LicSearchError(f"sbatch {output} failed: {submitted.stderr.strip() or submitted.stdout.strip()}")
        print(submitted.stdout.strip())
    return 0
