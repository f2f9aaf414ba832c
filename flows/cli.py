"""``radstore``: the command line. Each command calls the same library function a flow calls."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from flows.cli_options import (
    EVAL_OPTIONS,
    EXTRACT_OPTIONS,
    HEALTH_OPTIONS,
    TRAIN_OPTIONS,
    config_option,
    config_values,
    encoder_list,
)

EXIT_OK, EXIT_PARTIAL, EXIT_ERROR = 0, 1, 2


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n}"


def cmd_synth(args: argparse.Namespace) -> int:
    """``radstore synth``: write a synthetic cohort (and optionally its preview), print the manifest's
    path; exits 0, or 2 with one line when the options describe no cohort (a negative
    ``--near-duplicates``, more of them than the cohort has train images, a ``--subgroup-effect``
    naming no subgroup), before anything is written."""
    from featurestore.preview import contact_sheet
    from featurestore.synth.cohort import NEAR_DUPLICATES_FILE, SUBGROUP_EFFECT_FILE, SynthConfig, synthesize

    try:
        cfg = SynthConfig(n=args.n, seed=args.seed, min_side=args.min_side, max_side=args.max_side, workers=args.workers,
                          split=args.split, compression=args.compression, near_duplicates=args.near_duplicates,
                          near_duplicate_noise=args.near_duplicate_noise, subgroup_effect=args.subgroup_effect,
                          subgroup_effect_strength=args.subgroup_effect_strength)  # fmt: skip
        manifest = synthesize(args.out, cfg, progress=not args.quiet)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    print(f"wrote {cfg.n + cfg.near_duplicates} images and {manifest}")
    if cfg.near_duplicates:
        print(f"near-duplicates: {manifest.parent / NEAR_DUPLICATES_FILE}")
    if cfg.subgroup_effect:
        print(f"subgroup effect: {manifest.parent / SUBGROUP_EFFECT_FILE}")
    if args.preview:
        png = contact_sheet(str(manifest), args.preview if isinstance(args.preview, str) else f"{args.out}/preview.png")
        print(f"preview: {png}")
    return EXIT_OK


def cmd_preview(args: argparse.Namespace) -> int:
    """``radstore preview``: draw a manifest's contact sheet and print its path; exits 0."""
    from featurestore.preview import contact_sheet

    print(f"preview: {contact_sheet(args.manifest, args.out, n=args.n)}")
    return EXIT_OK


def cmd_ingest(args: argparse.Namespace) -> int:
    """``radstore ingest``: index a manifest's images, print the counts; exits 1 if any image failed."""
    from featurestore.ingest import ingest
    from featurestore.manifest import load_manifest
    from featurestore.store import Store

    manifest = load_manifest(args.manifest)  # first: a manifest that cannot be read creates no store
    store = Store.open(args.store, create=True)
    report = ingest(manifest, store, progress=not args.quiet, log=lambda m: print(m, file=sys.stderr))
    print(report.summary())
    if report.failed:
        print(f"{len(report.failed)} image(s) failed; listed above and in {args.store}/ingest_errors/", file=sys.stderr)
        return EXIT_PARTIAL
    return EXIT_OK


def cmd_encoders(args: argparse.Namespace) -> int:
    """``radstore encoders``: print the table of registered encoders; exits 0."""
    from featurestore.encoders.registry import readme_table

    print(readme_table(), end="")
    return EXIT_OK


def cmd_tasks(args: argparse.Namespace) -> int:
    """``radstore tasks``: print every task with its kind, column, metrics and heads; exits 0."""
    from featurestore.tasks import TASKS

    print_rows(
        [
            {
                "task": t.name,
                "kind": t.kind,
                "column": t.column,
                "input": t.input,
                "metrics": ", ".join(t.spec.metrics),
                "heads": ", ".join(t.spec.heads),
            }
            for t in TASKS.values()
        ]
    )
    return EXIT_OK


def cmd_store_info(args: argparse.Namespace) -> int:
    """``radstore store info``: print the store's images and feature sets with sizes and the scheme of
    their weights fingerprint, with any alias id each is also found under (``--json``: the raw
    summary); exits 0."""
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
        print(
            f"{'feature set':32s} {'encoder':12s} {'grid':>12s} {'dim':>5s} {'dtype':>8s} {'images':>7s} {'size':>10s}  "
            f"{'fingerprint':24s}  weights"
        )
        for f in s["feature_sets"]:
            print(
                f"{f['feature_set_id']:32s} {f['encoder']:12s} {f['grid']:>12s} {f['global_dim']:>5d} {f['dtype']:>8s} "
                f"{f['images']:>7d} {_human(f['bytes']):>10s}  {f['fingerprint_scheme']:24s}  {f['labels'].get('weights', '')}"
            )
            for a in f["aliases"]:  # found under a newer fingerprint of the same weights
                print(f"  also {a['feature_set_id']} ({a['fingerprint_scheme']} fingerprint {a['weights_fingerprint']})")
    return EXIT_OK


def cmd_store_verify(args: argparse.Namespace) -> int:
    """``radstore store verify``: print each feature set's state; exits 1 if a committed image lacks
    its grid or a shard was committed more than once."""
    from featurestore.store import Store

    store = Store.open(args.store)
    bad_total = 0
    for fs in store.feature_sets():
        bad = fs.verify()
        shared = fs.shared_shards()
        bad_total += len(bad) + len(shared)
        problems = []
        if bad:
            problems.append(f"{len(bad)} committed image(s) without grid data: {', '.join(bad[:10])}")
        if shared:
            which = ", ".join(f"shard {k} by {n} parts" for k, n in list(shared.items())[:10])
            problems.append(f"{len(shared)} shard(s) committed more than once ({which}): re-extract their images")
        print(f"{fs.id}: {len(fs)} images, {'; '.join(problems) or 'ok'}")
    return EXIT_OK if bad_total == 0 else EXIT_PARTIAL


def cmd_store_gc(args: argparse.Namespace) -> int:
    """``radstore store gc``: remove dead writers' temporary files, print each feature set's array
    use; exits 0 (committed data is never touched)."""
    from featurestore.gc import collect
    from featurestore.store import Store

    report = collect(Store.open(args.store), older_than_s=args.older_than)
    for f in report.feature_sets:
        print(f.line())
    print(f"store: removed {len(report.removed)} other temporary file(s); {_human(report.removed_bytes)} freed in all")
    return EXIT_OK


def cmd_extract(args: argparse.Namespace) -> int:
    """``radstore extract``: run the extraction flow (every listed encoder from one decode of each
    image), print its message and each feature set id; exits 0, 1 if images failed, 2 on an error.
    With nothing new to extract it says so before Prefect starts."""
    from featurestore.config import ExtractConfig
    from flows.noop import complete_feature_sets

    names = args.encoder
    opts = config_values(args, ExtractConfig, EXTRACT_OPTIONS)
    # Nothing new: say so from the store and the describe cache, without a model or Prefect.
    cfgs = [ExtractConfig(encoder=n, **opts) for n in names]
    done = complete_feature_sets(args.manifest, args.store, cfgs)
    if done is not None:
        print("\n".join([*(c.line() for c in done), *(c.feature_set_id for c in done)]))
        return EXIT_OK
    from featurestore.encoders import preflight
    from featurestore.manifest import error_line, load_manifest

    # Fail in one line, before Prefect starts, on what a user must fix (weights, manifest).
    for name in names:
        preflight(name, args.weights)
    load_manifest(args.manifest)
    from flows.extract import run_extraction

    state = run_extraction(args.runner, manifest=args.manifest, store=args.store, configs=[c.to_json() for c in cfgs])
    out = state.result(raise_on_failure=False)
    if isinstance(out, BaseException):
        print(f"error: {out}", file=sys.stderr)
        return EXIT_ERROR
    for image_id, path, reason in out["rejected"]:
        print(error_line(image_id, path, reason), file=sys.stderr)
    print(state.message)
    for r in out["results"]:
        if args.profile:
            print(r["profile"])
        print(r["feature_set_id"])
    return EXIT_PARTIAL if any(r["failed"] for r in out["results"]) else EXIT_OK


def _train_config(args: argparse.Namespace) -> dict:
    from heads.config import TrainConfig

    cfg = config_values(args, TrainConfig, TRAIN_OPTIONS)
    if args.small_refiner:
        cfg.update(refiner_channels=(32, 16), attn_size=32)
    return cfg


def cmd_train(args: argparse.Namespace) -> int:
    """``radstore train``: train one head or the grid of task x head x fold, print each run id; exits 0."""
    from featurestore.store import Store
    from featurestore.tasks import TASKS, all_heads, get_task

    store = Store.open(args.store)
    fs = store.feature_set(args.feature_set)  # fail now, in one line, on a wrong id
    tasks = list(TASKS) if args.task == "all" else [get_task(args.task).name]
    from heads.data import load_labels

    for t in tasks:  # bad labels or masks: one line now, before Prefect starts
        load_labels(get_task(t), fs, args.manifest, store)
    heads = list(all_heads()) if args.head == "all" else [args.head]
    folds = list(range(args.folds)) if args.fold == "all" else [None if args.fold is None else int(args.fold)]
    from flows.noop import train_noop

    reused = train_noop(args.store, args.feature_set, tasks, heads, folds, args.manifest, _train_config(args))
    if reused:  # every run exists with the same config and data: nothing to train, no Prefect
        print(reused)
        return EXIT_OK
    if len(tasks) * len(heads) * len(folds) == 1:
        from flows.train import train_head
        from heads.config import TrainConfig

        TrainConfig(task=tasks[0], head=heads[0])  # validate before Prefect starts
        run_id = train_head(args.store, args.feature_set, tasks[0], heads[0], args.manifest, {**_train_config(args), "fold": folds[0]})
        print(run_id)
        return EXIT_OK
    from flows.train import train_grid

    for run_id in train_grid(
        args.store, args.feature_set, tasks, heads, folds if folds != [None] else None, args.manifest, _train_config(args)
    ):
        print(run_id)
    return EXIT_OK


def cmd_runs(args: argparse.Namespace) -> int:
    """``radstore runs``: print every run, oldest first, with its epochs and test metrics; exits 0."""
    from featurestore.layout.records import list_runs
    from featurestore.store import Store

    runs = list_runs(Store.open(args.store))
    if not runs:
        print("no runs yet (radstore train ...)")
    for r in sorted(runs, key=lambda r: r.created_at):
        metrics = ", ".join(f"{k}={v:.3f}" for k, v in r.test_metrics.items())
        print(f"{r.run_id}  epochs={r.epochs} best={r.best_epoch}  {metrics}")
    return EXIT_OK


def print_rows(rows: list[dict], out=None) -> None:
    """A list of dicts as an aligned plain-text table (what a terminal and a CI log both show)."""
    out = out or sys.stdout
    if not rows:
        print("(no rows)", file=out)
        return
    cols = list(rows[0])
    cells = [[str(c) for c in cols]] + [["" if r.get(c) is None else str(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    for k, row in enumerate(cells):
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip(), file=out)
        if k == 0:
            print("  ".join("-" * w for w in widths), file=out)


def _eval_config(args: argparse.Namespace) -> dict:
    from evaluation.config import EvalConfig

    return config_values(args, EvalConfig, EVAL_OPTIONS)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``radstore evaluate``: evaluate the runs, print the results table, the positive control's checks
    and the evaluation id; exits 1 if a positive-control metric missed its expected value."""
    from evaluation.artifacts import EvalConfig, decisions_table, read_evaluation, results_table, select_runs
    from featurestore.store import Store

    EvalConfig(**_eval_config(args))  # fail in one line, before Prefect starts
    store = Store.open(args.store)
    runs = select_runs(store, None if args.all else args.runs)
    from flows.evaluate import evaluate_flow

    out = evaluate_flow(args.store, runs, _eval_config(args))
    _, tables = read_evaluation(store, out["eval_id"])
    print_rows(results_table(tables["metrics"], primary_only=not args.all_metrics))
    decisions = decisions_table(tables)
    if decisions:
        print("\ncalibration (ECE, raw and after Platt scaling fitted on validation) and the Youden operating point chosen on validation:")
        print_rows(decisions)
    print("new version" if out["created"] else "these inputs were evaluated before: existing version, unchanged", file=sys.stderr)
    bad = _print_controls(out["controls"])
    print(out["eval_id"])
    return EXIT_PARTIAL if bad else EXIT_OK


def _print_controls(controls: list[dict]) -> int:
    """Print the positive control's checks (stderr); returns how many missed."""
    from evaluation.controls import ControlCheck, missed

    for c in controls:
        print(ControlCheck(**c).line(), file=sys.stderr)
    bad = missed(controls)
    if bad:
        print(f"{len(bad)} positive-control metric(s) missed their expected value: the pipeline lost (or leaked) signal", file=sys.stderr)
    return len(bad)


def cmd_query(args: argparse.Namespace) -> int:
    """``radstore query``: run SQL over the store, print the rows or write them to ``--out``; exits 0."""
    from evaluation.query import query, write_result

    table = query(args.store, args.sql)
    if args.out:
        print(f"{table.num_rows} row(s) -> {write_result(table, args.out)}")
        return EXIT_OK
    shown = table.slice(0, args.max_rows).to_pylist()
    print_rows(shown)
    if table.num_rows > len(shown):
        print(f"... {table.num_rows - len(shown)} more row(s); --max-rows N or --out FILE.csv|.parquet", file=sys.stderr)
    return EXIT_OK


def cmd_diff(args: argparse.Namespace) -> int:
    """``radstore diff A B``: every metric row that changed between two evaluations, why (from the
    recorded lineage) and whether beyond noise; ``--json`` for machines. Exits 0."""
    import json

    from evaluation.diff import diff, format_diff
    from featurestore.store import Store

    result = diff(Store.open(args.store), args.a, args.b, alpha=args.alpha)
    if args.json:
        print(json.dumps({**result, "changes": [c.to_json() for c in result["changes"]]}, indent=2))
    else:
        print(format_diff(result))
    return EXIT_OK


def cmd_health(args: argparse.Namespace) -> int:
    """``radstore health``: check (or find, when nothing changed) the embedding health of the
    store's feature sets, print one overview row each, then the flags, leakage pairs and drift;
    exits 1 with ``--fail-on-flags`` when any set is flagged."""
    import math

    from featurestore.errors import RadstoreError
    from featurestore.health import HealthConfig, check_store
    from featurestore.health.text import detail_lines, overview_rows
    from featurestore.store import Store

    try:
        cfg = HealthConfig(**config_values(args, HealthConfig, HEALTH_OPTIONS))
    except ValueError as e:
        raise RadstoreError(str(e)) from None
    results = check_store(Store.open(args.store), args.feature_set or None, cfg, progress=not args.quiet)
    if args.json:
        finite = lambda r: {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}  # noqa: E731
        print(json.dumps([{**h.record.to_json(), "path": h.path, "created": h.created,
                           "summary": [finite(r) for r in h.tables["summary"].drop(["created_at"]).to_pylist()]}
                          for h in results], indent=2))  # fmt: skip
    else:
        print_rows(overview_rows(results))
        for h in results:
            print("\n".join(["", *detail_lines(h)]))
    flagged = sum(bool(h.record.flags) for h in results)
    return EXIT_PARTIAL if args.fail_on_flags and flagged else EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    """``radstore report``: write the HTML report of an evaluation and print its path; exits 0."""
    from evaluation.report import write_report
    from featurestore.store import Store

    path = write_report(Store.open(args.store), args.out, args.eval)
    print(f"report: {path}")
    return EXIT_OK


def _study_config(args: argparse.Namespace):
    from flows.config import load_config

    return load_config(args.config, store=args.store, manifest=args.manifest, runner=args.runner, report=args.report)


def cmd_study(args: argparse.Namespace) -> int:
    """``radstore study``: run the whole study, print its results and what each stage did; exits 1 if
    any image failed to extract or a positive-control metric missed its expected value."""
    from evaluation.artifacts import decisions_table, read_evaluation, results_table
    from featurestore.encoders import get_encoder
    from featurestore.store import Store

    cfg = _study_config(args)
    from flows.noop import study_noop

    unchanged = study_noop(cfg)
    if unchanged:  # nothing new since the last study: its evaluation and report stand
        print(unchanged)
        return EXIT_OK
    from flows.study import run_study

    out = run_study(cfg)
    _, tables = read_evaluation(Store.open(cfg.store, storage_options=cfg.storage_options or None), out["eval_id"])
    print()
    print_rows([{k: v for k, v in r.items() if k != "fold" or v != ""} for r in results_table(tables["metrics"])])
    decisions = decisions_table(tables)
    if decisions:
        print("\ncalibration (ECE, raw and after Platt scaling fitted on validation) and the Youden operating point chosen on validation:")
        print_rows([{k: v for k, v in r.items() if k != "fold" or v != ""} for r in decisions])
    print()
    for enc, e in out["extracted"].items():
        weights = e["weights"] or ("found locally" if get_encoder(enc).needs_weights else "none needed")
        print(f"{enc:12s} weights={weights}  {e['done']} new, {e['skipped']} reused, {e['failed']} failed  -> {out['feature_sets'][enc]}")
    for h in out.get("health", []):
        if "error" in h:
            print(f"health {h['feature_set_id']}: failed: {h['error']}")
            continue
        flags = "; ".join(h["flags"]) or "no flags"
        print(f"health {h['encoder']:12s} {h['health_id']} ({'computed' if h['created'] else 'unchanged'}): {flags}")
    print(f"training: {out['trained']} run(s) trained, {out['reused']} reused")
    print("stage seconds: " + ", ".join(f"{k} {v}" for k, v in out["timings"].items()))
    print(f"evaluation: {out['eval_id']} ({'new version' if out['new_eval'] else 'inputs unchanged: existing version'})")
    if out["report"]:
        print(f"report: {out['report']}")
    bad = _print_controls(out.get("controls", []))
    failed = sum(e["failed"] for e in out["extracted"].values())
    return EXIT_PARTIAL if failed or bad else EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    """``radstore serve``: register the study's Prefect deployments and run them here until
    interrupted; exits 0."""
    from flows.deployments import serve_all

    serve_all(_study_config(args), limit=args.limit)
    return EXIT_OK


def _split(text: str) -> tuple[float, float, float]:
    """``--split 0.5,0.2,0.3``: three fractions that sum to 1."""
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3 or min(parts) <= 0 or abs(sum(parts) - 1) > 1e-6:
        raise argparse.ArgumentTypeError(f"--split {text!r}: give three positive fractions that sum to 1, e.g. 0.5,0.2,0.3")
    return parts  # type: ignore[return-value]


def build_parser() -> argparse.ArgumentParser:
    """The ``radstore`` parser; choices and defaults come from the configs and registries."""
    from evaluation.config import CI_METHODS, EvalConfig
    from evaluation.metrics import EMPTY_CONVENTIONS
    from featurestore.config import BITS, DEVICES, INTENSITIES, STORAGE_DTYPES, ExtractConfig
    from featurestore.synth.cohort import SynthConfig
    from featurestore.tasks import TASKS, all_heads
    from heads.config import SEG_LOSSES, SOLVERS, TrainConfig

    p = argparse.ArgumentParser(
        prog="radstore", description="Embedding feature store and evaluation pipeline for radiology foundation models."
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("synth", help="write a synthetic chest X-ray cohort (DICOM/PNG, masks, manifest.parquet)")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--n", type=int, default=24, help="number of images (default 24)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--min-side", type=int, default=512, help="smallest image side in pixels (default 512)")
    s.add_argument("--max-side", type=int, default=1024, help="largest image side (default 1024; ~3000 for real sizes)")
    s.add_argument("--workers", type=int, default=0, help="processes (default: one per core)")
    s.add_argument("--split", type=_split, default=SynthConfig.split, metavar="TRAIN,VAL,TEST",
                   help="fractions of patients per split (default: %(default)s)")  # fmt: skip
    s.add_argument("--compression", choices=SynthConfig.COMPRESSIONS, default="none",
                   help="DICOM pixel data: uncompressed or a lossless transfer syntax (default: none)")  # fmt: skip
    s.add_argument("--near-duplicates", type=int, default=SynthConfig.near_duplicates, metavar="K",
                   help="also write K test images, each a noisy copy of a distinct train image under a patient of its own "
                        "(ground truth: OUT/near_duplicates.parquet; default: %(default)s)")  # fmt: skip
    s.add_argument("--near-duplicate-noise", type=float, default=SynthConfig.near_duplicate_noise, metavar="STD",
                   help="std of the Gaussian noise on a near-duplicate's [0, 1] image (default: %(default)s)")  # fmt: skip
    s.add_argument("--subgroup-effect", default=None, metavar="ATTRIBUTE=VALUE",
                   help="plant fainter findings in one subgroup, e.g. manufacturer=VendorC, view_position=AP, patient_sex=F "
                        "(ground truth: OUT/subgroup_effect.json)")  # fmt: skip
    s.add_argument("--subgroup-effect-strength", type=float, default=SynthConfig.subgroup_effect_strength, metavar="S",
                   help="that subgroup's findings are drawn at contrast 1 - S (default: %(default)s)")  # fmt: skip
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
    s.add_argument(
        "--encoder",
        required=True,
        type=encoder_list,
        metavar="ENCODER[,ENCODER...]",
        help="one or more registered encoders, comma-separated: each image is decoded once for all of them (radstore encoders lists them)",
    )
    config_option(
        s, ExtractConfig, "weights", "model folder, 'random' or 'random:tiny' (default: $RADSTORE_WEIGHTS_DIR/<encoder>, then the HF cache)"
    )
    config_option(s, ExtractConfig, "size", "input resolution (default: the encoder's own); another size is another feature set", type=int)
    config_option(s, ExtractConfig, "bits", "quantise to 8 bits (default, as HF processors) or keep 16", type=int, choices=BITS)
    config_option(
        s,
        ExtractConfig,
        "intensity",
        "window: DICOM display pipeline (default); minmax: the study's per-image min-max stretch",
        choices=INTENSITIES,
    )
    config_option(s, ExtractConfig, "batch_size", "images per forward pass (default: 16 on CPU, 64 on CUDA)", type=int)
    config_option(s, ExtractConfig, "device", "where the encoder runs", choices=DEVICES)
    config_option(
        s, ExtractConfig, "num_workers", "DataLoader processes decoding images (default: the cores available minus one)", type=int
    )
    config_option(s, ExtractConfig, "shard_images", "images per shard of a new feature set (0: chosen by size)")
    config_option(s, ExtractConfig, "dtype", "storage dtype of the patch grids; another dtype is another feature set",
                  choices=STORAGE_DTYPES)  # fmt: skip
    s.add_argument("--profile", action="store_true", help="print where the wall time went: input wait, forward, commit (per encoder)")
    s.add_argument("--runner", default="local", help="local, dask (a LocalCluster) or dask:ADDRESS (an existing cluster)")
    s.set_defaults(func=cmd_extract)

    s = sub.add_parser("train", help="train heads on a feature set, streaming from the store (Prefect flow); prints run ids")
    s.add_argument("--store", required=True)
    s.add_argument("--feature-set", required=True, help="feature set id (radstore store info lists them)")
    s.add_argument("--task", required=True, choices=[*TASKS, "all"], help="%(choices)s")
    config_option(s, TrainConfig, "head", "the head to train, or all (each where its task kind takes it)", choices=[*all_heads(), "all"])
    s.add_argument("--manifest", default=None, help="labels and masks (default: the manifest(s) the images were ingested from)")
    s.add_argument("--fold", default=None, help="k-fold by patient: a fold number or 'all' (default: the manifest's split)")
    config_option(s, TrainConfig, "folds", "number of folds for --fold")
    config_option(s, TrainConfig, "seed", "seed of initialisation, shuffling and folds")
    config_option(s, TrainConfig, "lr", "AdamW learning rate")
    config_option(s, TrainConfig, "max_epochs", "most epochs (early stopping on the validation loss ends sooner)")
    config_option(s, TrainConfig, "patience", "epochs without a better validation loss before stopping")
    config_option(s, TrainConfig, "min_delta", "smallest fall of the validation loss that counts as better")
    config_option(s, TrainConfig, "min_epochs", "never stop before this many epochs")
    config_option(s, TrainConfig, "min_val_positives", "warn when validation has fewer positives or negatives than this")
    config_option(s, TrainConfig, "batch_size", "images per step")
    config_option(s, TrainConfig, "seg_loss", "segmentation loss", choices=SEG_LOSSES)
    config_option(s, TrainConfig, "target_size", "segmentation target resolution")
    config_option(s, TrainConfig, "device", "where heads train", choices=DEVICES)
    config_option(s, TrainConfig, "solver", "global probes: the study's AdamW, or the CLIP-style L-BFGS probe", choices=SOLVERS)
    config_option(s, TrainConfig, "train_fraction", "train on this fraction of the training split (nested, patient-level)", type=float)
    config_option(s, TrainConfig, "shots", "classification: train on this many training images of each class (nested, patient-level)",
                  type=int)  # fmt: skip
    config_option(s, TrainConfig, "subset_seed", "which patients a --train-fraction / --shots subset draws")
    s.add_argument("--small-refiner", action="store_true", help="cross-attention refiner 32/16 channels at 32x32 (CPU demos)")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("runs", help="list the training runs in a store")
    s.add_argument("--store", required=True)
    s.set_defaults(func=cmd_runs)

    s = sub.add_parser("evaluate", help="metrics with bootstrap CIs and corrected comparisons -> a new immutable version (Prefect flow)")
    s.add_argument("--store", required=True)
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--runs", nargs="+", metavar="RUN", help="run ids (radstore runs lists them)")
    g.add_argument("--all", action="store_true", help="the latest run of every task x head x fold x feature set")
    config_option(s, EvalConfig, "resamples", "bootstrap resamples")
    config_option(s, EvalConfig, "seed", "seed of the bootstrap resamples")
    config_option(s, EvalConfig, "method", "confidence interval method (auto: logit DeLong for AUROC, BCa otherwise)", choices=CI_METHODS)
    config_option(
        s,
        EvalConfig,
        "empty_both",
        "Dice/IoU of an image with empty true and predicted masks: 1, left out, or 0",
        choices=EMPTY_CONVENTIONS,
    )
    config_option(s, EvalConfig, "threshold", "segmentation probability threshold (default: each run's, chosen on validation)", type=float)
    config_option(s, EvalConfig, "min_class_count", "fewest positives and negatives for AUROC/AP to be reported")
    config_option(
        s, EvalConfig, "target_sensitivity", "classification: the validation sensitivity the sensitivity@ operating point must reach"
    )
    s.add_argument("--all-metrics", action="store_true", help="print every metric, not only each task's headline")
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser(
        "query",
        help="SQL (DuckDB) over the store: images, features, cls, runs, predictions, lineage, evaluations, metrics, latest, "
        "comparisons, per_image, folds",
    )
    s.add_argument("--store", required=True)
    s.add_argument("sql")
    s.add_argument("--out", default=None, help="write the result to FILE.csv or FILE.parquet instead of printing it")
    s.add_argument("--max-rows", type=int, default=50)
    s.set_defaults(func=cmd_query)

    s = sub.add_parser("diff", help="why two evaluations differ: each changed metric row, its reasons, and whether beyond noise")
    s.add_argument("--store", required=True)
    s.add_argument("a", help="evaluation id, latest or latest~N (N versions before the latest)")
    s.add_argument("b", help="evaluation id, latest or latest~N")
    s.add_argument("--alpha", type=float, default=0.05, help="false discovery rate for 'significant' (Benjamini-Hochberg)")
    s.add_argument("--json", action="store_true", help="print the result as JSON")
    s.set_defaults(func=cmd_diff)

    from featurestore.health.config import HealthConfig

    s = sub.add_parser(
        "health",
        help="embedding health of each feature set: spectrum, collapse, CKA with the controls, leakage test~train, drift "
        "between backfills (a versioned artifact; recomputed only when something changed)",
    )
    s.add_argument("--store", required=True)
    s.add_argument("--feature-set", action="append", default=[], help="a feature set id (repeatable; default: every one)")
    for name, help_ in HEALTH_OPTIONS.items():
        config_option(s, HealthConfig, name, help_)
    s.add_argument("--json", action="store_true", help="every version's record and summary as JSON")
    s.add_argument("--fail-on-flags", action="store_true", help="exit 1 when any feature set is flagged")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.set_defaults(func=cmd_health)

    s = sub.add_parser("report", help="HTML report with figures of an evaluation (default: the latest)")
    s.add_argument("--store", required=True)
    s.add_argument("--out", required=True, help="output directory (index.html + figures/)")
    s.add_argument("--eval", default=None, help="evaluation id (default: the latest)")
    s.set_defaults(func=cmd_report)

    for name, help_, func in (
        ("study", "the whole study from one config: ingest, extract, train, evaluate, report (Prefect flow)", cmd_study),
        ("serve", "serve the scheduled deployments (nightly backfill -> study) from this process", cmd_serve),
    ):
        s = sub.add_parser(name, help=help_)
        s.add_argument("--config", required=True, help="study config YAML (examples: configs/demo.yaml, configs/study.yaml)")
        s.add_argument("--store", default=None, help="override the config's store")
        s.add_argument("--manifest", default=None, help="override the config's manifest")
        s.add_argument("--runner", default=None, help="override the config's runner: local, dask, dask:ADDRESS")
        s.add_argument("--report", default=None, help="override the config's report directory")
        if name == "serve":
            s.add_argument("--limit", type=int, default=None, help="most flow runs at once (default: no limit)")
        s.set_defaults(func=func)

    sub.add_parser("encoders", help="the registered encoders (model, input size, embedding shapes)").set_defaults(func=cmd_encoders)
    sub.add_parser("tasks", help="the tasks, their kinds, metrics and heads").set_defaults(func=cmd_tasks)

    # Dispatched in main() before parsing: its options are benchmarks.run's (radstore bench --help).
    sub.add_parser("bench", help="run the benchmarks, same as make bench (radstore bench --help lists the options)")

    st = sub.add_parser("store", help="inspect and tidy a store").add_subparsers(dest="store_command", required=True, metavar="SUBCOMMAND")
    s = st.add_parser("info", help="images and feature sets with their sizes")
    s.add_argument("store")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_store_info)
    s = st.add_parser("verify", help="check that every committed row has its grid on storage")
    s.add_argument("store")
    s.set_defaults(func=cmd_store_verify)
    s = st.add_parser("gc", help="remove temporary files of dead writers; report array rows no commit uses")
    s.add_argument("store")
    s.add_argument(
        "--older-than",
        type=float,
        default=None,
        metavar="SECONDS",
        help="a temporary file of another machine counts as dead after this long unchanged (default: one day); "
        "this machine's count as dead as soon as their process is gone",
    )
    s.set_defaults(func=cmd_store_gc)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """The ``radstore`` entry point: the command's exit status (0 ok, 1 partial, 2 error); a
    RadstoreError is printed as one line, not a traceback."""
    from featurestore.errors import RadstoreError

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # everything after `bench` belongs to the benchmark runner (--help included)
        from benchmarks.run import main as bench_main

        return int(bench_main(argv[1:]) or 0)
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except RadstoreError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
