"""`zerolm clean`: free the disk space a finished run no longer needs."""

from __future__ import annotations

from zerolm.cli.main import add_verb


def register(sub) -> None:
    p = add_verb(sub, "clean",
                 "delete a finished run's resumable checkpoints (and final/ or best/)",
                 "zerolm clean runs/sst2 --keep best --dry-run",
                 description="Delete what a finished run no longer needs: its resumable "
                             "checkpoints (model and optimizer state, the bulk of a run's disk "
                             "use), and with --keep best its final/ model, or with --keep final "
                             "its best/ model. Refuses a run in progress, an interrupted run "
                             "(its checkpoints are what --resume continues from) and anything "
                             "that would leave the run without a model.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run's out_dir")
    p.add_argument("--keep", choices=["best", "final", "both"], default="both",
                   help="which model directories to keep (default: both)")
    p.add_argument("--dry-run", action="store_true",
                   help="say what would be deleted, delete nothing")
    p.set_defaults(func=run)


def run(args) -> int:
    from zerolm.train.rundir import clean_run, format_size

    removed = clean_run(args.run_dir, keep=args.keep, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for path, size in removed:  # checkpoints/, best/, final/: all directories
        print(f"{verb} {path}/  ({format_size(size)})")
    freed = format_size(sum(size for _, size in removed))
    if not removed:
        print(f"nothing to remove in {args.run_dir}")
    else:
        print(f"{'would free' if args.dry_run else 'freed'} {freed}")
    return 0
