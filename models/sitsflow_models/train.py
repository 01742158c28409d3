"""The training recipe: seeded, grouped validation split, class-weighted cross-entropy
that ignores unlabelled samples, Adam, early stopping on the validation loss."""

from __future__ import annotations

import copy
import math
import os
import random
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from . import nets
from .data import InputError


@dataclass
class TrainConfig:
    arch: str
    seed: int = 0
    #: Upper bound; early stopping usually ends sooner.
    epochs: int = 100
    batch_size: int = 64
    #: Epochs without a better validation loss before stopping.
    patience: int = 10
    #: A validation loss must beat the best by more than this to count as better: on
    #: separable data the loss creeps towards 0 for ever and would never stop early.
    min_delta: float = 1e-3
    learning_rate: float = 1e-3
    weight_decay: float = 1e-6
    #: Share of the groups (parcels) held out for validation, per class.
    validation_fraction: float = 0.2
    #: Upper bound of a class's loss weight (inverse frequency, 1 on a balanced set):
    #: uncapped, a class of five samples among hundreds weighs tens of times the others
    #: and its few samples steer the network.
    max_class_weight: float = 3.0
    #: Time augmentation (year transfer): each training sample of each batch loses this
    #: share of its dates (set missing, as a cloud would)…
    drop_dates: float = 0.0
    #: … and is shifted by up to this many dates either way (the vacated dates missing),
    #: as a season that comes early or late.
    shift_dates: int = 0
    hyperparameters: dict = field(default_factory=dict)


@dataclass
class TrainResult:
    classifier: nets.Classifier
    mean: np.ndarray
    std: np.ndarray
    train_index: np.ndarray
    validation_index: np.ndarray
    class_weights: np.ndarray
    history: list[dict]
    best_epoch: int | None
    stopped_early: bool
    #: Processes that trained it (torchrun: DistributedDataParallel), 1 without.
    world_size: int = 1


def distributed() -> tuple[int, int]:
    """(rank, world size) under torchrun (`WORLD_SIZE` set), else (0, 1); joins the
    process group (gloo on CPU, NCCL on CUDA) on the first call."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def leave_process_group() -> None:
    """Under torchrun, once every rank has trained: wait for all, then leave the process
    group on each rank. A rank that exited while others still held the group could be
    aborted by gloo's teardown (seen once as SIGABRT of rank 1 on a loaded 2-core machine);
    rank 0 then goes on alone (assessment, export), which needs no collective."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def seed_everything(seed: int) -> None:
    """Same seed, same data, same machine → same weights."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)


def grouped_split(targets: np.ndarray, groups: list[str] | None, fraction: float,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Train / validation row indices. Whole groups go to one side (no parcel on both);
    groups are drawn per class (a group's class is its most frequent label) so every
    class with at least two groups is validated. Without groups each row is a group."""
    n = len(targets)
    keys = groups if groups is not None else [str(i) for i in range(n)]
    members: dict[str, list[int]] = {}
    for i, g in enumerate(keys):
        members.setdefault(g, []).append(i)
    by_class: dict[int, list[str]] = {}
    for g, rows in members.items():
        labelled = targets[rows][targets[rows] >= 0]
        if len(labelled) == 0:
            continue  # unlabelled groups carry no loss; they stay in training
        values, counts = np.unique(labelled, return_counts=True)
        by_class.setdefault(int(values[np.argmax(counts)]), []).append(g)
    held_out: set[str] = set()
    for c in sorted(by_class):
        class_groups = sorted(by_class[c])
        if len(class_groups) < 2:
            continue
        k = min(len(class_groups) - 1, max(1, round(fraction * len(class_groups))))
        chosen = rng.choice(len(class_groups), size=k, replace=False)
        held_out.update(class_groups[j] for j in chosen)
    validation = np.array(sorted(i for g in held_out for i in members[g]), dtype=np.int64)
    train = np.setdiff1d(np.arange(n), validation)
    return train, validation


def band_statistics(cube: np.ndarray, bands: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and standard deviation over samples and dates, ignoring NaN."""
    flat = cube.reshape(-1, cube.shape[-1]).astype(np.float64)
    valid = ~np.isnan(flat)
    for b, name in enumerate(bands):
        if not valid[:, b].any():
            raise InputError(f"band `{name}` has no valid value in the training samples")
    mean = np.nanmean(flat, axis=0)
    std = np.nanstd(flat, axis=0)
    # A constant band carries no information; std 1 keeps it finite (all zeros after centring).
    std = np.where(std > 0, std, 1.0)
    return mean.astype(np.float32), std.astype(np.float32)


def class_weights(targets: np.ndarray, classes: int, cap: float = math.inf) -> np.ndarray:
    """Inverse class frequency, scaled so a balanced set has weight 1 everywhere, at most
    `cap`; a class without training sample gets 0 (it is never a target, and 1/0 is not
    a weight)."""
    counts = np.bincount(targets[targets >= 0], minlength=classes).astype(np.float64)
    total = counts.sum()
    with np.errstate(divide="ignore"):
        w = np.where(counts > 0, total / (classes * counts), 0.0)
    return np.minimum(w, cap).astype(np.float32)


#: Classes with fewer training samples than this are named in a warning: too few to learn.
SMALL_CLASS = 10


def small_classes(targets: np.ndarray, classes: int) -> list[tuple[int, int]]:
    """(class index, training samples) of the classes present with fewer than
    `SMALL_CLASS` samples."""
    counts = np.bincount(targets[targets >= 0], minlength=classes)
    return [(c, int(n)) for c, n in enumerate(counts) if 0 < n < SMALL_CLASS]


def make_loss(weights: np.ndarray) -> nn.CrossEntropyLoss:
    """Class-weighted cross-entropy; targets -1 (unlabelled: label 0 / empty) add no loss."""
    return nn.CrossEntropyLoss(weight=torch.from_numpy(weights), ignore_index=-1)


def predict_logits(classifier: nn.Module, cube: np.ndarray, batch_size: int = 4096) -> torch.Tensor:
    classifier.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(cube), batch_size):
            out.append(classifier(torch.from_numpy(cube[start:start + batch_size])))
    return torch.cat(out)


@dataclass
class Fit:
    """What `fit_loop` reports: every epoch's event, the best epoch and its validation loss
    (None and inf without validation), and whether patience ran out before the cap."""
    history: list[dict]
    best_epoch: int | None
    best_loss: float
    stopped_early: bool


def fit_loop(module: nn.Module, epochs: int, train_epoch: Callable[[], dict], validate: Callable[[], dict | None],
             patience: int, min_delta: float, emit: Callable[[dict], None], rank: int = 0, world: int = 1) -> Fit:
    """The early-stopping loop every recipe trains with. Each epoch `train_epoch()` trains
    and returns the epoch event's training fields, then `validate()` its validation
    fields (`val_loss` first), or None where this rank does not validate. A validation
    loss below the best by more than `min_delta` keeps a copy of `module`'s weights;
    after `patience` epochs without one, training stops. Under torchrun rank 0's decision
    is broadcast (so no rank waits on a collective alone) and only rank 0 emits. At the
    end `module` holds the best epoch's weights (when this rank validated) and is in
    eval mode."""
    history: list[dict] = []
    best_loss, best_epoch, best_state, waited, stopped_early = math.inf, None, None, 0, False
    for epoch in range(1, epochs + 1):
        event = {"event": "epoch", "epoch": epoch, "epochs": epochs, **train_epoch()}
        stop = torch.zeros(1)
        validation = validate()
        if validation is not None:
            event.update(validation)
            val_loss = validation["val_loss"]
            if val_loss < best_loss - min_delta:
                best_loss, best_epoch, waited = val_loss, epoch, 0
                best_state = copy.deepcopy(module.state_dict())
            else:
                waited += 1
            stop[0] = float(waited >= patience)
        if world > 1:
            import torch.distributed as dist

            dist.broadcast(stop, src=0)  # rank 0 decides, so no rank waits on a collective alone
        history.append(event)
        if rank == 0:
            emit(event)
        if stop[0] > 0:
            stopped_early = True
            if rank == 0:
                emit({"event": "early_stop", "epoch": epoch, "best_epoch": best_epoch, "best_val_loss": best_loss})
            break
    if best_state is not None:
        module.load_state_dict(best_state)
    module.eval()
    return Fit(history=history, best_epoch=best_epoch, best_loss=best_loss, stopped_early=stopped_early)


def augment_in_time(x: torch.Tensor, drop: float, shift: int, generator: torch.Generator) -> torch.Tensor:
    """`x` `[N, T, B]` with each sample shifted by a draw in −shift…shift dates (the dates
    shifted in from outside missing) and then a share `drop` of its dates set missing;
    NaN is what the networks read as missing."""
    n, t, b = x.shape
    if shift > 0:
        offset = torch.randint(-shift, shift + 1, (n, 1), generator=generator)
        source = torch.arange(t)[None, :] - offset
        inside = (source >= 0) & (source < t)
        x = x.gather(1, source.clamp(0, t - 1)[:, :, None].expand(n, t, b))
        x = torch.where(inside[:, :, None], x, torch.full_like(x, float("nan")))
    if drop > 0:
        dropped = torch.rand((n, t), generator=generator) < drop
        x = torch.where(dropped[:, :, None], torch.full_like(x, float("nan")), x)
    return x


def train(cube: np.ndarray, targets: np.ndarray, groups: list[str] | None, bands: list[str], classes: int,
          config: TrainConfig, emit: Callable[[dict], None] = lambda event: None,
          dates: list[str] | None = None) -> TrainResult:
    """Trains a classifier on `[N, T, B]` raw values with class indices (-1 = unlabelled).
    `dates` (the samples' date names) give L-TAE its positions (`nets.day_positions`)."""
    if config.epochs < 1 or config.batch_size < 2 or config.patience < 1:
        raise InputError("epochs and patience must be ≥ 1 and batch size ≥ 2")
    if not 0.0 <= config.drop_dates < 1.0 or config.shift_dates < 0:
        raise InputError("drop_dates must be in [0, 1) and shift_dates ≥ 0")
    rank, world = distributed()
    if config.batch_size < 2 * world:
        raise InputError(f"batch size {config.batch_size} is too small for {world} processes: each needs two "
                         f"samples per step (batch norm)")
    seed_everything(config.seed)
    rng = np.random.default_rng(config.seed)
    train_index, validation_index = grouped_split(targets, groups, config.validation_fraction, rng)
    if not (targets[train_index] >= 0).any():
        raise InputError("no labelled training sample")
    mean, std = band_statistics(cube[train_index], bands)
    classifier = nets.build(config.arch, bands=cube.shape[2], dates=cube.shape[1], classes=classes, mean=mean,
                            std=std, hyperparameters=config.hyperparameters,
                            positions=nets.day_positions(dates, cube.shape[1]))
    weights = class_weights(targets[train_index], classes, config.max_class_weight)
    loss_fn = make_loss(weights)
    small = small_classes(targets[train_index], classes)
    if small:
        emit({"event": "small_classes", "classes": [{"index": c, "samples": n} for c, n in small],
              "below": SMALL_CLASS, "max_class_weight": config.max_class_weight})
    # Early stopping watches the unweighted loss: a weighted one can be won by a rare
    # class's few validation samples while the rest gets worse.
    validation_loss = make_loss(np.ones(classes, dtype=np.float32))
    # Under torchrun every rank holds the whole set and draws the same order; each step's
    # batch is dealt out across the ranks (rank r takes every world-th sample), and
    # DistributedDataParallel averages their gradients, so the ranks' weights stay equal.
    model: nn.Module = classifier if world == 1 else nn.parallel.DistributedDataParallel(classifier)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)

    x_train = torch.from_numpy(np.ascontiguousarray(cube[train_index]))
    y_train = torch.from_numpy(targets[train_index])
    has_validation = len(validation_index) > 0 and (targets[validation_index] >= 0).any()
    if has_validation:
        x_val = np.ascontiguousarray(cube[validation_index])
        y_val = torch.from_numpy(targets[validation_index])

    def train_epoch() -> dict:
        classifier.train()
        order = torch.randperm(len(x_train), generator=generator)
        total, seen = 0.0, 0
        for start in range(0, len(order), config.batch_size):
            batch = order[start:start + config.batch_size]
            # Decided on the whole batch, which every rank sees: all ranks step together.
            if len(batch) // world < 2:
                continue  # batch norm needs two samples to estimate a variance
            if not (y_train[batch] >= 0).any():
                continue
            part = batch[rank::world]
            yb = y_train[part]
            optimiser.zero_grad()
            xb = x_train[part]
            if config.drop_dates > 0 or config.shift_dates > 0:
                xb = augment_in_time(xb, config.drop_dates, config.shift_dates, generator)
            logits = model(xb)
            # A rank whose share holds no label still joins the gradient exchange.
            loss = loss_fn(logits, yb) if (yb >= 0).any() else logits.sum() * 0.0
            loss.backward()
            optimiser.step()
            labelled = int((yb >= 0).sum())
            total += loss.item() * labelled
            seen += labelled
        if world > 1:
            # Batch norm's running statistics are updated by each rank's own share: take
            # rank 0's (as DDP does before each forward), so validation and the saved
            # weights are the same on every rank.
            import torch.distributed as dist

            for buffer in classifier.buffers():
                dist.broadcast(buffer, src=0)
        return {"train_loss": total / seen if seen else None}

    def validate() -> dict | None:
        # Every rank validates (the same weights, the same rows), so every rank ends on
        # the best epoch's weights.
        if not has_validation:
            return None
        logits = predict_logits(classifier, x_val)
        keep = y_val >= 0
        return {"val_loss": float(validation_loss(logits, y_val)),
                "val_oa": float((logits.argmax(1)[keep] == y_val[keep]).float().mean())}

    fit = fit_loop(classifier, config.epochs, train_epoch, validate, config.patience, config.min_delta, emit, rank,
                   world)
    return TrainResult(classifier=classifier, mean=mean, std=std, train_index=train_index,
                       validation_index=validation_index if has_validation else np.array([], dtype=np.int64),
                       class_weights=weights, history=fit.history, best_epoch=fit.best_epoch,
                       stopped_early=fit.stopped_early, world_size=world)
