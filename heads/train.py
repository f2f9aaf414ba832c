"""Train one head on one task of one feature set, streaming from the store; write an immutable run.

Defaults as in the study: AdamW (lr 1e-4, weight decay 1e-2), batch size 16, early stopping on
the validation loss (patience 5, best weights restored), at most 500 epochs, fixed seeds, bf16
autocast on CUDA. Early stopping also has a minimum improvement (``min_delta``) and a minimum
number of epochs (``min_epochs``); linear probes standardise their inputs with statistics of the
training split fixed before training (:func:`fit_standardisers`). A mask kind's threshold is
chosen on the validation split (:mod:`heads.operating_points`) and recorded in the run; a
validation split with too few positives or negatives is warned about and recorded.

What a task kind trains against (its loss and how the head's output becomes
the prediction) is its objective (heads.objectives); which head is built comes from the head
registry (heads.registry); nothing here depends on a kind's name.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from evaluation.metrics import class_counts, get_metric, mask_arrays
from featurestore.extract import resolve_device
from featurestore.featureset import FeatureSet
from featurestore.store import Store
from featurestore.tasks import TaskDef, get_task
from heads.config import TrainConfig
from heads.data import StreamingLoader, load_labels, mask_targets, split_counts, split_indices
from heads.lineage import lineage_table, mask_hashes
from heads.linear import LinearProbe, Standardiser
from heads.objectives import get_objective, target_scale
from heads.operating_points import choose_threshold, score_thresholds
from heads.registry import get_head
from heads.runs import save_run


@dataclass
class TrainResult:
    """What one training run produced: its run id, the epoch whose weights were kept, the loss curve,
    the test metrics and the seconds it took."""

    run_id: str
    best_epoch: int
    epochs: int
    curve: list[dict] = field(default_factory=list)
    test: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    operating_points: dict[str, float] = field(default_factory=dict)
    val_counts: dict[str, int] = field(default_factory=dict)
    warnings: dict[str, str] = field(default_factory=dict)


def build_head(task: TaskDef, cfg: TrainConfig, fs: FeatureSet, y_train: np.ndarray | None = None) -> torch.nn.Module:
    """The configured head for ``task`` on ``fs`` (a regression head learns the standardised target)."""
    kind = task.spec
    objective = get_objective(kind.objective)
    scale = target_scale(y_train) if objective.scaled and y_train is not None else None
    return get_head(cfg.head).build(kind, cfg, fs.spec.grid[0], fs.spec.global_dim, objective.outputs, scale)


def _predict(model, loader, task: TaskDef, device, autocast) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(ids, predictions, targets) for a whole split, in loader order."""
    model.eval()
    predict = get_objective(task.spec.objective).predict
    ids, preds, ys = [], [], []
    with torch.inference_mode():
        for b in loader:
            with autocast():
                out = model(_to(b.g, device), _to(b.patches, device)).float()
            p = predict(out)
            ids += b.ids
            preds.append(p.cpu().numpy())
            ys.append(b.y.numpy())
    return ids, np.concatenate(preds), np.concatenate(ys)


def _to(x, device):
    return None if x is None else x.to(device, non_blocking=True)


def fit_standardisers(model: torch.nn.Module, loader: StreamingLoader) -> dict[str, int]:
    """Fix every :class:`~heads.linear.Standardiser` of ``model`` to the per-channel mean and std
    of its input over ``loader`` (the training split, one pass, float64 sums; patch grids pool
    over positions). Returns how many rows each input's statistics came from."""
    stds = [m for m in model.modules() if isinstance(m, Standardiser)]
    if not stds:
        return {}
    acc: dict[str, list] = {}
    for b in loader:
        for name, x in (("global", b.g), ("patches", b.patches)):
            if x is None or name not in {m.input for m in stds}:
                continue
            x = x.double()
            dims = [0, *range(2, x.dim())]
            n = x.numel() // x.shape[1]
            s, q = x.sum(dims), (x * x).sum(dims)
            if name in acc:
                acc[name][0] += s
                acc[name][1] += q
                acc[name][2] += n
            else:
                acc[name] = [s, q, n]
    for m in stds:
        if m.input not in acc:
            raise RuntimeError(f"no {m.input} input in the training loader to standardise")
        s, q, n = acc[m.input]
        mean = s / n
        var = (q / n - mean * mean).clamp_min(0)
        m.set_stats(mean.float(), var.sqrt().float())
    return {k: v[2] for k, v in acc.items()}


def validation_counts(task: TaskDef, y_val) -> dict[str, int]:
    """Positives and negatives of the validation split, by the evaluation's rule
    (:func:`evaluation.metrics.class_counts`): labels, or images with a non-empty / empty mask
    for a mask kind; empty where the target is not binary (regression)."""
    flags = [bool(np.asarray(m).any()) for m in y_val] if task.spec.dense else y_val
    counts = class_counts(flags)
    return {} if counts is None else {"positives": counts[0], "negatives": counts[1]}


def validation_warning(task: TaskDef, counts: dict[str, int], minimum: int) -> str | None:
    """The warning for a validation split with fewer than ``minimum`` positives or negatives
    (None when it has enough, or nothing is counted for the kind). A mask kind needs only
    images with a non-empty mask: an organ present in every image (the heart) is not a defect,
    and the per-image Dice that picks its threshold is carried by the positive images."""
    if not counts:
        return None
    short = counts["positives"] < minimum or (not task.spec.dense and counts["negatives"] < minimum)
    if not short:
        return None
    if task.spec.dense:
        what = f"{counts['positives']} images with a non-empty mask (of {counts['positives'] + counts['negatives']})"
    else:
        what = f"{counts['positives']} positive and {counts['negatives']} negative labels"
    return f"{task.name}: the validation split has {what}, fewer than {minimum}; early stopping and the operating point chosen on it are unreliable"


def quick_metrics(task: TaskDef, pred: np.ndarray, y: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """The run's own summary on its test split: the kind's metrics without intervals (the
    evaluation computes intervals and comparisons). Mask kinds are thresholded at
    ``threshold``; ``dice_positive`` is the mean Dice over images with a non-empty target."""
    kind = task.spec
    if kind.dense:
        arrays = mask_arrays(y > 0.5, pred, threshold)
    else:
        arrays = {"y": np.asarray(y, np.float64), "prediction": np.asarray(pred, np.float64)}
    out = {m: float(get_metric(m)(arrays)[0]) for m in kind.metrics}
    if kind.dense:
        out["dice_positive"] = float(get_metric("dice_nonempty")(arrays)[0])
    return {k: v for k, v in out.items() if not (math.isnan(v) and k != "dice_positive")}


def train(store: Store, feature_set_id: str, cfg: TrainConfig, manifest: str | list[str] | None = None) -> TrainResult:
    """Train, early-stop, predict the test split and write the run; returns its id and curve."""
    from tqdm import tqdm

    t0 = time.perf_counter()
    task = get_task(cfg.task)
    fs = store.feature_set(feature_set_id)
    labels = load_labels(task, fs, manifest, store)
    splits = split_indices(labels, cfg.fold, cfg.folds, cfg.seed, cfg.subset)
    masks = mask_hashes(labels.mask_uris) if labels.mask_uris is not None else None
    lineage = lineage_table(labels, splits, masks)  # what the run used: its data identity
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    kind = task.spec
    if kind.dense:
        y_all = mask_targets(fs, labels, cfg.target_size, task.column, progress=cfg.progress, mask_hashes=masks)
    else:
        y_all = labels.values

    def loader(split: str, shuffle: bool) -> StreamingLoader:
        idx = splits[split]
        return StreamingLoader(
            fs,
            [labels.image_ids[i] for i in idx],
            _Rows(y_all, idx),
            batch_size=cfg.batch_size,
            shuffle=shuffle,
            seed=cfg.seed,
            buffer_images=cfg.buffer_images,
            need_global=not kind.dense or get_head(cfg.head).reads_global,
            need_patches=kind.dense,
            in_memory=cfg.in_memory,
        )

    train_l, val_l, test_l = loader("train", True), loader("val", False), loader("test", False)
    y_train = labels.values[splits["train"]]
    model = build_head(task, cfg, fs, y_train)
    lbfgs = cfg.solver == "lbfgs" and get_objective(kind.objective).lbfgs is not None  # mask kinds train with AdamW
    if not lbfgs:  # the L-BFGS probe fixes the same statistics from the split it collects
        fit_standardisers(model, loader("train", False))  # fixed input statistics of the training split
    model = model.to(device)
    val_counts = validation_counts(task, _Rows(y_all, splits["val"]) if kind.dense else y_all[splits["val"]])
    warned = validation_warning(task, val_counts, cfg.min_val_positives)
    run_warnings = {"validation_warning": warned} if warned else {}
    if warned:
        warnings.warn(warned, stacklevel=2)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    fg = float(np.mean([y_all[i].mean() for i in splits["train"][:512]])) if kind.dense else None
    loss_fn = get_objective(kind.objective).make_loss(y_train, cfg, fg)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else contextlib.nullcontext
    best, best_state, best_epoch, bad = math.inf, None, -1, 0
    ref = math.inf  # the validation loss of the last improvement by more than min_delta
    curve: list[dict] = []
    if lbfgs:
        model, curve = fit_lbfgs_probe(task, model, train_l, val_l)
        best_epoch = 0
    bar = tqdm(
        range(0 if lbfgs else cfg.max_epochs), desc=f"{cfg.task}/{cfg.head}", unit="epoch", disable=not cfg.progress, dynamic_ncols=True
    )
    for epoch in bar:
        model.train()
        tl, tn = 0.0, 0
        te = time.perf_counter()
        for b in train_l:
            if len(b.ids) < 2 and any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
                continue  # BatchNorm cannot train on one sample
            with autocast():
                out = model(_to(b.g, device), _to(b.patches, device))
            loss = loss_fn(out, b.y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tl += loss.item() * len(b.ids)
            tn += len(b.ids)
        model.eval()
        vl, vn = 0.0, 0
        with torch.inference_mode():
            for b in val_l:
                with autocast():
                    out = model(_to(b.g, device), _to(b.patches, device))
                vl += float(loss_fn(out, b.y.to(device))) * len(b.ids)
                vn += len(b.ids)
        row = {"epoch": epoch, "train_loss": tl / max(tn, 1), "val_loss": vl / max(vn, 1), "seconds": time.perf_counter() - te}
        curve.append(row)
        bar.set_postfix(loss=f"{row['train_loss']:.4f}", val=f"{row['val_loss']:.4f}", best=best_epoch)
        if row["val_loss"] < best:  # the weights kept: the lowest validation loss seen
            best, best_state, best_epoch = row["val_loss"], copy.deepcopy(model.state_dict()), epoch
        if row["val_loss"] < ref - cfg.min_delta:  # progress that resets the patience
            ref, bad = row["val_loss"], 0
        else:
            bad += 1
        if bad >= cfg.patience and epoch + 1 >= cfg.min_epochs:
            break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    operating_points: dict[str, float] = {}
    if kind.dense:  # the mask threshold: the one maximising mean Dice on the validation split
        _, vpred, vy = _predict(model, val_l, task, device, autocast)
        t = choose_threshold(vy, vpred, objective="dice")
        val_dice = score_thresholds(vy, vpred, "dice", np.array([t]))[0]
        operating_points = {"threshold": t, "val_dice": float(val_dice)}
        del vpred, vy
    val = None if kind.dense else _predict(model, val_l, task, device, autocast)  # kept for the evaluation's operating points
    ids, pred, y = _predict(model, test_l, task, device, autocast)
    metrics = quick_metrics(task, pred, y, operating_points.get("threshold", 0.5))
    run_id = save_run(
        store,
        task,
        cfg.to_json(),
        fs.id,
        fs.spec.encoder,
        curve,
        best_epoch,
        metrics,
        split_counts(labels, splits),
        model,
        ids,
        pred,
        y,
        operating_points,
        val_counts,
        run_warnings,
        lineage,
        val,
    )
    return TrainResult(run_id, best_epoch, len(curve), curve, metrics, time.perf_counter() - t0, operating_points, val_counts,
                       run_warnings)  # fmt: skip


def _collect(loader: StreamingLoader) -> tuple[np.ndarray, np.ndarray]:
    gs, ys = [], []
    for b in loader:
        gs.append(b.g.numpy())
        ys.append(b.y.numpy())
    return np.concatenate(gs).astype(np.float64), np.concatenate(ys).astype(np.float64)


def fit_lbfgs_probe(task: TaskDef, model: LinearProbe, train_l: StreamingLoader, val_l: StreamingLoader) -> tuple[LinearProbe, list[dict]]:
    """Fit the probe in closed form / L-BFGS; copy it into ``model`` so the run format is the same."""
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.metrics import log_loss

    method = get_objective(task.spec.objective).lbfgs
    xtr, ytr = _collect(train_l)
    xva, yva = _collect(val_l)
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    ztr, zva = (xtr - mu) / sd, (xva - mu) / sd
    curve = []
    best = None
    for strength in np.logspace(-4, 2, 13):
        if method == "logistic":
            clf = LogisticRegression(C=strength, class_weight="balanced", max_iter=5000).fit(ztr, ytr)
            w = np.where(yva == 1, 0.5 / max(yva.mean(), 1e-6), 0.5 / max(1 - yva.mean(), 1e-6))
            loss = log_loss(yva, clf.predict_proba(zva)[:, 1], sample_weight=w, labels=[0, 1])
            coef, icpt = clf.coef_[0], clf.intercept_[0]
        else:
            ym, ys = float(model.y_mean), float(model.y_std)
            reg = Ridge(alpha=1.0 / strength).fit(ztr, (ytr - ym) / ys)
            loss = float(np.mean(((reg.predict(zva) * ys + ym) - yva) ** 2) / ys**2)
            coef, icpt = reg.coef_, reg.intercept_
        curve.append({"epoch": len(curve), "C": float(strength), "val_loss": float(loss), "train_loss": math.nan})
        if best is None or loss < best[0]:
            best = (loss, coef, icpt)
    _, coef, icpt = best
    with torch.no_grad():
        model.norm.set_stats(torch.from_numpy(mu), torch.from_numpy(sd))
        model.fc.weight.zero_()
        model.fc.bias.zero_()
        row = 1 if method == "logistic" else 0  # logits [0, w.z + b]: softmax[:, 1] = sigmoid(w.z + b)
        model.fc.weight[row] = torch.from_numpy(coef).float()
        model.fc.bias[row] = float(icpt)
    return model.eval(), curve


class _Rows:
    """``y_all[idx][k]`` without copying y_all (a memmap for masks)."""

    def __init__(self, y_all, idx: np.ndarray):
        self.y_all, self.idx = y_all, idx

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, k):
        return self.y_all[self.idx[k]]
