"""Train one head on one task of one feature set, streaming from the store; write an immutable run.

Defaults as in the study: AdamW (lr 1e-4, weight decay 1e-2), batch size 16, early stopping on
the validation loss (patience 5, best weights restored), at most 500 epochs, fixed seeds, bf16
autocast on CUDA; class-weighted cross-entropy for classification, MSE for regression, BCE
(or Dice + BCE) for segmentation.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from featurestore.errors import RadstoreError
from featurestore.extract import resolve_device
from featurestore.featureset import FeatureSet
from featurestore.store import Store
from heads.cross_attention import CrossAttentionSegHead
from heads.data import StreamingLoader, load_labels, mask_targets, split_indices
from heads.linear import LinearProbe, LinearSegProbe
from heads.runs import RunRecord, write_run
from heads.tasks import HEADS, TaskDef, get_task

SEG_LOSSES = ("bce", "dice+bce")
SOLVERS = ("adamw", "lbfgs")


@dataclass(frozen=True)
class TrainConfig:
    """One training run; the same object drives the CLI, the flows and the tests."""

    task: str
    head: str = "linear"
    lr: float = 1e-4
    weight_decay: float = 1e-2
    batch_size: int = 16
    patience: int = 5
    max_epochs: int = 500
    seed: int = 0
    seg_loss: str = "bce"
    target_size: int = 128  # segmentation target resolution (masks resized to it)
    fold: int | None = None  # None: the manifest's split; k: fold k of `folds`, by patient
    folds: int = 5
    buffer_images: int = 256  # shuffle buffer (rows held in memory while streaming)
    in_memory: bool = False  # load the split once instead of streaming (benchmark baseline)
    device: str = "auto"
    attn_size: int = 64
    refiner_channels: tuple[int, int] = (512, 256)
    fusion: str = "add"
    # "adamw": the study's protocol. "lbfgs": the CLIP-style linear probe for global tasks,
    # scikit-learn's L-BFGS logistic / ridge regression with the L2 strength chosen on the
    # validation split (holds the split's global vectors in memory, never the grids).
    # Segmentation tasks ignore it and train with AdamW.
    solver: str = "adamw"
    progress: bool = True

    def __post_init__(self) -> None:
        get_task(self.task)
        if self.head not in HEADS:
            raise RadstoreError(f"unknown head {self.head!r}; choose one of {', '.join(HEADS)}")
        if self.solver not in SOLVERS:
            raise RadstoreError(f"solver must be one of {SOLVERS}")
        if self.seg_loss not in SEG_LOSSES:
            raise RadstoreError(f"seg_loss must be one of {SEG_LOSSES}")
        object.__setattr__(self, "refiner_channels", tuple(self.refiner_channels))

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["refiner_channels"] = list(self.refiner_channels)
        return d


@dataclass
class TrainResult:
    run_id: str
    best_epoch: int
    epochs: int
    curve: list[dict] = field(default_factory=list)
    test: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def target_scale(y_train: np.ndarray) -> tuple[float, float]:
    """Mean and std of a regression target on the training split (std 1 if constant)."""
    return float(np.mean(y_train)), float(np.std(y_train)) or 1.0


def build_head(task: TaskDef, cfg: TrainConfig, fs: FeatureSet, y_train: np.ndarray | None = None) -> torch.nn.Module:
    c, _, _ = fs.spec.grid
    if task.kind != "segmentation":
        if cfg.head == "cross-attention":
            raise RadstoreError(f"the cross-attention head segments; task {task.name} takes a linear head")
        if task.kind == "regression" and y_train is not None:
            return LinearProbe(fs.spec.global_dim, 1, *target_scale(y_train))
        return LinearProbe(fs.spec.global_dim, 2 if task.kind == "classification" else 1)
    if cfg.head == "linear":
        return LinearSegProbe(c, cfg.target_size)
    return CrossAttentionSegHead(c, fs.spec.global_dim, cfg.target_size, cfg.attn_size, cfg.refiner_channels, fusion=cfg.fusion)


def _dice_loss(logits: torch.Tensor, y: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    p = torch.sigmoid(logits).flatten(1)
    y = y.flatten(1)
    return (1 - (2 * (p * y).sum(1) + eps) / (p.sum(1) + y.sum(1) + eps)).mean()


def make_loss(task: TaskDef, cfg: TrainConfig, y_train: np.ndarray, fg_fraction: float | None = None):
    if task.kind == "classification":
        pos = float(y_train.mean())
        if pos in (0.0, 1.0):
            raise RadstoreError(f"{task.name}: the training split has only one class ({'positive' if pos else 'negative'})")
        weight = torch.tensor([0.5 / (1 - pos), 0.5 / pos], dtype=torch.float32)  # balanced class weights

        def loss(out, y):
            return F.cross_entropy(out.float(), y.long(), weight=weight.to(out.device))

        return loss
    if task.kind == "regression":
        mu, sd = target_scale(y_train)
        return lambda out, y: F.mse_loss((out.float()[:, 0] - mu) / sd, (y - mu) / sd)

    # Segmentation: BCE weighted like the classification classes (foreground is ~1-15% of
    # pixels; unweighted BCE settles on "all background" for weak features).
    f = min(max(fg_fraction or 0.5, 1e-3), 0.5)
    pos_weight = torch.tensor(min((1 - f) / f, 50.0))

    def seg(out, y):
        bce = F.binary_cross_entropy_with_logits(out.float(), y, pos_weight=pos_weight.to(out.device))
        return bce + _dice_loss(out.float(), y) if cfg.seg_loss == "dice+bce" else bce

    return seg


def _predict(model, loader, task: TaskDef, device, autocast) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(ids, predictions, targets) for a whole split, in loader order."""
    model.eval()
    ids, preds, ys = [], [], []
    with torch.inference_mode():
        for b in loader:
            with autocast():
                out = model(_to(b.g, device), _to(b.patches, device)).float()
            if task.kind == "classification":
                p = torch.softmax(out, 1)[:, 1]
            elif task.kind == "regression":
                p = out[:, 0]
            else:
                p = torch.sigmoid(out)
            ids += b.ids
            preds.append(p.cpu().numpy())
            ys.append(b.y.numpy())
    return ids, np.concatenate(preds), np.concatenate(ys)


def _to(x, device):
    return None if x is None else x.to(device, non_blocking=True)


def quick_metrics(task: TaskDef, pred: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """The run's own summary (issue #5's evaluation computes CIs and comparisons)."""
    from sklearn.metrics import average_precision_score, r2_score, roc_auc_score

    if task.kind == "classification":
        if len(np.unique(y)) < 2:
            return {}
        return {"auroc": float(roc_auc_score(y, pred)), "auprc": float(average_precision_score(y, pred))}
    if task.kind == "regression":
        return {"r2": float(r2_score(y, pred)), "mae": float(np.abs(pred - y).mean())}
    p = pred > 0.5
    t = y > 0.5
    inter = (p & t).sum((1, 2))
    denom = p.sum((1, 2)) + t.sum((1, 2))
    union = (p | t).sum((1, 2))
    both_empty = denom == 0
    dice = np.where(both_empty, 1.0, 2 * inter / np.maximum(denom, 1))
    iou = np.where(both_empty, 1.0, inter / np.maximum(union, 1))
    return {"dice": float(dice.mean()), "iou": float(iou.mean()), "dice_positive": float(dice[t.any((1, 2))].mean()) if t.any() else math.nan}


def train(store: Store, feature_set_id: str, cfg: TrainConfig, manifest: str | list[str] | None = None) -> TrainResult:
    """Train, early-stop, predict the test split and write the run; returns its id and curve."""
    from tqdm import tqdm

    t0 = time.perf_counter()
    task = get_task(cfg.task)
    fs = store.feature_set(feature_set_id)
    labels = load_labels(task, fs, manifest, store)
    splits = split_indices(labels, cfg.fold, cfg.folds, cfg.seed)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    if task.kind == "segmentation":
        y_all = mask_targets(fs, labels, cfg.target_size, task.column, progress=cfg.progress)
    else:
        y_all = labels.values

    def loader(split: str, shuffle: bool) -> StreamingLoader:
        idx = splits[split]
        return StreamingLoader(
            fs, [labels.image_ids[i] for i in idx], _Rows(y_all, idx), batch_size=cfg.batch_size, shuffle=shuffle,
            seed=cfg.seed, buffer_images=cfg.buffer_images, need_global=task.input == "global" or cfg.head == "cross-attention",
            need_patches=task.input == "patches", in_memory=cfg.in_memory,
        )

    train_l, val_l, test_l = loader("train", True), loader("val", False), loader("test", False)
    y_train = labels.values[splits["train"]]
    model = build_head(task, cfg, fs, y_train).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    fg = float(np.mean([y_all[i].mean() for i in splits["train"][:512]])) if task.kind == "segmentation" else None
    loss_fn = make_loss(task, cfg, y_train, fg)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else contextlib.nullcontext
    best, best_state, best_epoch, bad = math.inf, None, -1, 0
    curve: list[dict] = []
    lbfgs = cfg.solver == "lbfgs" and task.input == "global"  # segmentation always trains with AdamW
    if lbfgs:
        model, curve = fit_lbfgs_probe(task, model, train_l, val_l)
        best_epoch = 0
    bar = tqdm(range(0 if lbfgs else cfg.max_epochs), desc=f"{cfg.task}/{cfg.head}", unit="epoch", disable=not cfg.progress, dynamic_ncols=True)
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
        if row["val_loss"] < best - 1e-7:
            best, best_state, best_epoch, bad = row["val_loss"], copy.deepcopy(model.state_dict()), epoch, 0
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    ids, pred, y = _predict(model, test_l, task, device, autocast)
    metrics = quick_metrics(task, pred, y)
    record = RunRecord(
        task=task, config=cfg.to_json(), feature_set_id=fs.id, encoder=fs.spec.encoder, curve=curve,
        best_epoch=best_epoch, test_metrics=metrics, splits={k: len(v) for k, v in splits.items()},
    )
    run_id = write_run(store, record, model, ids, pred, y)
    return TrainResult(run_id, best_epoch, len(curve), curve, metrics, time.perf_counter() - t0)


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

    xtr, ytr = _collect(train_l)
    xva, yva = _collect(val_l)
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    ztr, zva = (xtr - mu) / sd, (xva - mu) / sd
    curve = []
    best = None
    for strength in np.logspace(-4, 2, 13):
        if task.kind == "classification":
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
        model.norm.running_mean.copy_(torch.from_numpy(mu).float())
        model.norm.running_var.copy_(torch.from_numpy(sd**2 - model.norm.eps).clamp_min(0).float())
        model.fc.weight.zero_()
        model.fc.bias.zero_()
        row = 1 if task.kind == "classification" else 0  # logits [0, w.z + b]: softmax[:, 1] = sigmoid(w.z + b)
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
