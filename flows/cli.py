"""``radstore``: the command line. Each command calls the same library function a flow calls."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

EXIT_OK, EXIT_PARTIAL, EXIT_ERROR = 0, 1, 2
ENCODER_CHOICES = ("rad-dino", "chexagent", "biomedclip", "pixels", "random-vit")  # featurestore.encoders.ENCODERS


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n}"


def cmd_synth(args: argparse.Namespace) -> int:
    from featurestore.preview import contact_sheet
    from featurestore.synth.cohort import SynthConfig, synthesize

    cfg = SynthConfig(n=args.n, seed=args.seed, min_side=args.min_side, max_side=args.max_side, workers=args.workers)
    manifest = synthesize(args.out, cfg, progress=not args.quiet)
    print(f"wrote {cfg.n} images and {manifest}")
    if args.preview:
        png = contact_sheet(str(manifest), args.preview if isinstance(args.preview, str) else f"{args.out}/preview.png")
        print(f"preview: {png}")
    return EXIT_OK


def cmd_preview(args: argparse.Namespace) -> int:
    from featurestore.preview import contact_sheet

    print(f"preview: {contact_sheet(args.manifest, args.out, n=args.n)}")
    return EXIT_OK


def cmd_ingest(args: argparse.Namespace) -> int:
    from featurestore.ingest import ingest
    from featurestore.store import Store

    store = Store.open(args.store, create=True)
    report = ingest(args.manifest, store, progress=not args.quiet, log=lambda m: print(m, file=sys.stderr))
    print(report.summary())
    if report.failed:
        print(f"{len(report.failed)} image(s) failed; listed above and in {args.store}/ingest_errors/", file=sys.stderr)
        return EXIT_PARTIAL
    return EXIT_OK


def cmd_store_info(args: argparse.Namespace) -> int:
    from featurestore.store import Store

    s = Store.open(args.store).summary()
    if args.json:
        print(json.dumps(s, indent=2, default=str))
        return EXIT_OK
    fmts = ", ".join(f"{k}: {v}" for k, v in sorted(s["image_formats"].items())) or "none"
    print(f"store        {s['url']}  (format v{s['format_version']}, created {s['created_at']})")
    print(f"images       {s['images']}  ({fmts})")
    print(f"ingest errors {s['ingest_errors']}")
    print(f"size         {_human(s['bytes'])}")
    if not s["feature_sets"]:
        print("feature sets none yet (radstore extract ...)")
    else:
        print(f"{'feature set':32s} {'encoder':12s} {'grid':>12s} {'dim':>5s} {'dtype':>8s} {'images':>7s} {'size':>10s}  weights")
        for f in s["feature_sets"]:
            print(
                f"{f['feature_set_id']:32s} {f['encoder']:12s} {f['grid']:>12s} {f['global_dim']:>5d} {f['dtype']:>8s} "
                f"{f['images']:>7d} {_human(f['bytes']):>10s}  {f['labels'].get('weights', '')}"
            )
    return EXIT_OK


def cmd_store_verify(args: argparse.Namespace) -> int:
    from featurestore.store import Store

    store = Store.open(args.store)
    bad_total = 0
    for fs in store.feature_sets():
        bad = fs.verify()
        bad_total += len(bad)
        state = "ok" if not bad else f"{len(bad)} committed image(s) without grid data: {', '.join(bad[:10])}"
        print(f"{fs.id}: {len(fs)} images, {state}")
    return EXIT_OK if bad_total == 0 else EXIT_PARTIAL


def cmd_extract(args: argparse.Namespace) -> int:
    from featurestore.encoders import preflight
    from featurestore.manifest import load_manifest

    # Fail in one line, before Prefect starts, on what a user must fix (weights, manifest).
    preflight(args.encoder, args.weights)
    load_manifest(args.manifest)
    from flows.extract import run_extraction

    state = run_extraction(
        args.runner,
        manifest=args.manifest,
        store=args.store,
        encoder=args.encoder,
        weights=args.weights,
        size=args.size,
        bits=args.bits,
        batch_size=args.batch_size,
        device=args.device,
        num_workers=args.num_workers,
        shard_images=args.shard_images,
    )
    out = state.result(raise_on_failure=False)
    if isinstance(out, BaseException):
        print(f"error: {out}", file=sys.stderr)
        return EXIT_ERROR
    for image_id, reason in out["failed"]:
        print(f"ERROR image_id={image_id}: {reason}", file=sys.stderr)
    print(state.message)
    print(out["feature_set_id"])
    return EXIT_PARTIAL if out["failed"] else EXIT_OK


def _train_config(args: argparse.Namespace) -> dict:
    cfg = {"seed": args.seed, "lr": args.lr, "max_epochs": args.max_epochs, "patience": args.patience,
           "batch_size": args.batch_size, "seg_loss": args.seg_loss, "target_size": args.target_size,
           "device": args.device, "folds": args.folds, "solver": args.solver}
    if args.small_refiner:
        cfg.update(refiner_channels=(32, 16), attn_size=32)
    return cfg


def cmd_train(args: argparse.Namespace) -> int:
    from featurestore.store import Store
    from heads.tasks import HEADS, TASKS, get_task

    store = Store.open(args.store)
    store.feature_set(args.feature_set)  # fail now, in one line, on a wrong id
    tasks = list(TASKS) if args.task == "all" else [get_task(args.task).name]
    heads = list(HEADS) if args.head == "all" else [args.head]
    folds = list(range(args.folds)) if args.fold == "all" else [None if args.fold is None else int(args.fold)]
    if len(tasks) * len(heads) * len(folds) == 1:
        from flows.train import train_head
        from heads.train import TrainConfig

        TrainConfig(task=tasks[0], head=heads[0])  # validate before Prefect starts
        run_id = train_head(args.store, args.feature_set, tasks[0], heads[0], args.manifest, {**_train_config(args), "fold": folds[0]})
        print(run_id)
        return EXIT_OK
    from flows.train import train_grid

    for run_id in train_grid(args.store, args.feature_set, tasks, heads, folds if folds != [None] else None, args.manifest, _train_config(args)):
        print(run_id)
    return EXIT_OK


def cmd_runs(args: argparse.Namespace) -> int:
    from featurestore.store import Store
    from heads.runs import list_runs

    runs = list_runs(Store.open(args.store))
    if not runs:
        print("no runs yet (radstore train ...)")
    for r in sorted(runs, key=lambda r: r["created_at"]):
        metrics = ", ".join(f"{k}={v:.3f}" for k, v in r["test_metrics"].items())
        print(f"{r['run_id']}  epochs={r['epochs']} best={r['best_epoch']}  {metrics}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="radstore", description="Embedding feature store and evaluation pipeline for radiology foundation models.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("synth", help="write a synthetic chest X-ray cohort (DICOM/PNG, masks, manifest.parquet)")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--n", type=int, default=24, help="number of images (default 24)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--min-side", type=int, default=512, help="smallest image side in pixels (default 512)")
    s.add_argument("--max-side", type=int, default=1024, help="largest image side (default 1024; ~3000 for real sizes)")
    s.add_argument("--workers", type=int, default=0, help="processes (default: one per core)")
    s.add_argument("--preview", nargs="?", const=True, default=False, help="also write a contact sheet PNG (default OUT/preview.png)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_synth)

    s = sub.add_parser("preview", help="contact sheet PNG of a manifest's images with mask outlines")
    s.add_argument("--manifest", required=True)
    s.add_argument("--out", required=True, help="PNG path")
    s.add_argument("--n", type=int, default=8)
    s.set_defaults(func=cmd_preview)

    s = sub.add_parser("ingest", help="index a manifest's images into a store (idempotent)")
    s.add_argument("--manifest", required=True, help="manifest.parquet (or .csv) with image_id and path columns")
    s.add_argument("--store", required=True, help="store directory or fsspec URL (created if missing)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_ingest)

    s = sub.add_parser("extract", help="embed a manifest's images into a feature set (Prefect flow; backfills only what is missing)")
    s.add_argument("--manifest", required=True)
    s.add_argument("--store", required=True, help="store directory or fsspec URL (created if missing)")
    s.add_argument("--encoder", required=True, choices=ENCODER_CHOICES)
    s.add_argument("--weights", default=None, help="model folder, 'random' or 'random:tiny' (default: $RADSTORE_WEIGHTS_DIR/<encoder>, then the HF cache)")
    s.add_argument("--size", type=int, default=None, help="input resolution (default: the encoder's own); another size is another feature set")
    s.add_argument("--bits", type=int, choices=(8, 16), default=None, help="quantise to 8 bits (default, as HF processors) or keep 16")
    s.add_argument("--batch-size", type=int, default=16)
    s.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    s.add_argument("--num-workers", type=int, default=1, help="DataLoader processes decoding images (default 1)")
    s.add_argument("--shard-images", type=int, default=0, help="images per shard of a new feature set (default: by size)")
    s.add_argument("--runner", default="local", help="local, dask (a LocalCluster) or dask:ADDRESS (an existing cluster)")
    s.set_defaults(func=cmd_extract)

    s = sub.add_parser("train", help="train heads on a feature set, streaming from the store (Prefect flow); prints run ids")
    s.add_argument("--store", required=True)
    s.add_argument("--feature-set", required=True, help="feature set id (radstore store info lists them)")
    s.add_argument("--task", required=True, help="pneumothorax-cls, cardiomegaly-cls, ctr-reg, pneumothorax-seg, heart-seg, or all")
    s.add_argument("--head", default="linear", choices=("linear", "cross-attention", "all"))
    s.add_argument("--manifest", default=None, help="labels and masks (default: the manifest(s) the images were ingested from)")
    s.add_argument("--fold", default=None, help="k-fold by patient: a fold number or 'all' (default: the manifest's split)")
    s.add_argument("--folds", type=int, default=5)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--lr", type=float, default=1e-4)
    s.add_argument("--max-epochs", type=int, default=500)
    s.add_argument("--patience", type=int, default=5)
    s.add_argument("--batch-size", type=int, default=16)
    s.add_argument("--seg-loss", default="bce", choices=("bce", "dice+bce"))
    s.add_argument("--target-size", type=int, default=128, help="segmentation target resolution")
    s.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    s.add_argument("--solver", default="adamw", choices=("adamw", "lbfgs"), help="global probes: the study's AdamW, or the CLIP-style L-BFGS probe")
    s.add_argument("--small-refiner", action="store_true", help="cross-attention refiner 32/16 channels at 32x32 (CPU demos)")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("runs", help="list the training runs in a store")
    s.add_argument("--store", required=True)
    s.set_defaults(func=cmd_runs)

    st = sub.add_parser("store", help="inspect a store").add_subparsers(dest="store_command", required=True, metavar="SUBCOMMAND")
    s = st.add_parser("info", help="images and feature sets with their sizes")
    s.add_argument("store")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_store_info)
    s = st.add_parser("verify", help="check that every committed row has its grid on storage")
    s.add_argument("store")
    s.set_defaults(func=cmd_store_verify)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from featurestore.errors import RadstoreError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except RadstoreError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
