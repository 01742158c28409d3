"""Seed 000 (Flach, Brodský et al., SEN2VHR): super-resolution land-cover segmentation of
a Sentinel-2 series, trained semi-supervised from a few very-high-resolution annotations.

Module A, **ASUNet/ME**: an asymmetric U-Net. Its encoder reads a sliding window of
`window` high-resolution (10 m) dates ending at the target date — each date's bands and
a validity channel (0 where the date is missing: clouds, gaps), the bands' NaN set to 0
after normalisation, so it is fully convolutional and trains through gaps —; its
decoder comes back to the input grid with skip connections, then lifts on to a grid
`scale` times finer (4 ⇒ 2.5 m, 8 ⇒ 1.25 m) with as many 2× up-levels, without skips
(hence asymmetric). **ME**: the target date's month goes through an embedding and an
MLP that give a scale and a shift for every channel of every skip connection (FiLM), so
one network follows the seasons. The output is, per fine pixel, the probability of each
land-cover **transition** `i → j` (class `i` at the previous date, `j` at the target
date): `K²` channels, a softmax over them.

Training (the seed's §4): annotations are full-coverage VHR label maps for a few dates
(about one a year), each valid for HR dates at most `valid_days` away (the seed's 5).
An annotation of class `c` allows the **transition label set** `{c → c}`, plus
`{b → c}` where the annotation before it had class `b ≠ c` (the pixel kept its class
into the target date, or changed from the earlier annotation's); the loss is

    L = −log p(allowed set)  (labelled fine pixels whose HR pixel is valid at the target date)
        + λ · KL(p_t ‖ p_{t+1})  (every fine pixel, labelled or not: the semi-supervision)

the KL divergence between the transition probabilities of consecutive dates. λ = 0 is
the ablation the report compares. After training, the batch norms' statistics are
re-estimated with the kept weights (`recalibrate_norms`): the running averages lag the
weights, and in eval mode that lag moves boundaries inside 10 m pixels by whole fine pixels.

Module B, the **Markov chain** (`viterbi`): the most probable consistent sequence of
labels `y_0 … y_T`, maximising `Σ_t log p_t(y_{t−1} → y_t)` — a transition's "from"
must be the previous date's label.

The data is a patch dataset (`patches.py`, `sitsflow-patches/1`) whose `image.npy` holds
every date of the series (`BAND@DATE`, dates `YYYY-MM-DD`) and whose `fine.npy` holds the
annotations on the grid `scale` times finer (`fine` in dataset.json: `scale`, `dates`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from .data import ClassInfo, InputError
from .segmentation import ChannelNormalise, _block, _reflect, channel_statistics
from .train import fit_loop, seed_everything

ARCH = "asunet"
#: ONNX input names: the window of dates, and the target date's month (1–12).
INPUT_NAME = "reflectance"
MONTH_NAME = "month"
OUTPUT_NAME = "transitions"


def default_hyperparameters() -> dict:
    return {"width": 32, "depth": 3, "window": 3, "month_dim": 8, "dropout": 0.1}


def month_of(date: str) -> int:
    """The month of a `YYYY-MM-DD` date; 0 when the name is not a date (`t00`)."""
    try:
        return dt.date.fromisoformat(date[:10]).month
    except ValueError:
        return 0


def day_of(date: str) -> int | None:
    try:
        return dt.date.fromisoformat(date[:10]).toordinal()
    except ValueError:
        return None


class MonthFiLM(nn.Module):
    """ME: the month (1–12, as a float; 0 = unknown) one-hot → a learned embedding → an
    MLP → a scale `γ` and a shift `β` for each channel of each skip connection, applied as
    `skip · (1 + γ) + β` (identity at initialisation of the last layer)."""

    def __init__(self, channels: list[int], dim: int):
        super().__init__()
        self.channels = channels
        self.embed = nn.Linear(12, dim, bias=False)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, 2 * sum(channels)))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)
        self.register_buffer("months", torch.arange(1, 13, dtype=torch.float32).reshape(1, 12))

    def forward(self, month: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        one_hot = (month.reshape(-1, 1) == self.months).float()
        params = self.mlp(self.embed(one_hot))
        out, at = [], 0
        for c in self.channels:
            gamma = params[:, at:at + c].reshape(-1, c, 1, 1)
            beta = params[:, at + c:at + 2 * c].reshape(-1, c, 1, 1)
            out.append((gamma, beta))
            at += 2 * c
        return out


class ASUNet(nn.Module):
    """Encoder of `depth` poolings over the window's `window · (bands + 1)` channels;
    decoder back to the input grid with FiLM-modulated skips; then `log2(scale)` 2×
    up-levels without skips to the fine grid; a 1×1 head of `classes²` transition logits."""

    def __init__(self, bands: int, classes: int, scale: int, window: int = 3, width: int = 32, depth: int = 3,
                 month_dim: int = 8, dropout: float = 0.1):
        super().__init__()
        if scale < 1 or scale & (scale - 1):
            raise ValueError(f"the output scale {scale} must be a power of two (1, 2, 4, 8, …)")
        if window < 2:
            raise ValueError("window must be ≥ 2: a transition needs the previous date")
        if depth < 1 or width < 1:
            raise ValueError("width and depth must be ≥ 1")
        self.bands, self.classes, self.scale, self.window = bands, classes, scale, window
        widths = [width * 2**i for i in range(depth + 1)]
        cin = window * (bands + 1)
        self.down = nn.ModuleList([_block(cin if i == 0 else widths[i - 1], widths[i]) for i in range(depth)])
        self.bottom = _block(widths[depth - 1], widths[depth])
        self.up = nn.ModuleList([nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2)
                                 for i in reversed(range(depth))])
        self.merge = nn.ModuleList([_block(2 * widths[i], widths[i]) for i in reversed(range(depth))])
        self.film = MonthFiLM([widths[i] for i in range(depth)], month_dim)
        lifts = scale.bit_length() - 1
        lift_widths = [max(8, width // 2**(i + 1)) for i in range(lifts)]
        self.lift = nn.ModuleList()
        previous = width
        for w in lift_widths:
            self.lift.append(nn.Sequential(nn.ConvTranspose2d(previous, w, 2, stride=2), nn.BatchNorm2d(w), nn.ReLU(),
                                           nn.Conv2d(w, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU()))
            previous = w
        self.dropout = nn.Dropout2d(dropout)
        self.head = nn.Conv2d(previous, classes * classes, 1)
        self.pool = nn.MaxPool2d(2)
        self.multiple = 2**depth

    def forward(self, z: torch.Tensor, month: torch.Tensor) -> torch.Tensor:
        films = self.film(month)
        skips = []
        x = z
        for block, (gamma, beta) in zip(self.down, films):
            x = block(x)
            skips.append(x * (1 + gamma) + beta)
            x = self.pool(x)
        x = self.bottom(x)
        for up, merge in zip(self.up, self.merge):
            x = merge(torch.cat([up(x), skips.pop()], dim=1))
        for lift in self.lift:
            x = lift(x)
        return self.head(self.dropout(x))


class SuperResolution(nn.Module):
    """Normalisation (per band, the scene's statistics) + validity channels + ASUNet/ME.
    Input raw `[N, window · bands, H, W]` (date-major, target date last, NaN = missing)
    and the target month `[N]`; `forward` gives transition logits `[N, K², H·s, W·s]`."""

    def __init__(self, net: ASUNet, mean, std):
        super().__init__()
        w = net.window
        self.normalise = ChannelNormalise(torch.as_tensor(np.tile(np.asarray(mean, np.float32), w)),
                                          torch.as_tensor(np.tile(np.asarray(std, np.float32), w)))
        self.net = net

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        per_date = x.reshape(n, self.net.window, self.net.bands, h, w)
        # A date is valid where any of its bands is.
        valid = (~torch.isnan(per_date)).any(dim=2).float()
        return torch.cat([self.normalise(x), valid], dim=1)

    def forward(self, x: torch.Tensor, month: torch.Tensor) -> torch.Tensor:
        return self.net(self.inputs(x), month)

    def log_probabilities(self, x: torch.Tensor, month: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.forward(x, month), dim=1)

    def probabilities(self, x: torch.Tensor, month: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.forward(x, month), dim=1)


class TransitionProbabilities(nn.Module):
    """What the ONNX graph computes: raw window and month → softmax over the transitions."""

    def __init__(self, model: SuperResolution):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, month: torch.Tensor) -> torch.Tensor:
        return self.model.probabilities(x, month)


def build(bands: int, classes: int, scale: int, mean, std, hyperparameters: dict | None = None) -> SuperResolution:
    hp = default_hyperparameters()
    if hyperparameters:
        unknown = set(hyperparameters) - set(hp)
        if unknown:
            raise ValueError(f"unknown {ARCH} hyperparameter(s) {', '.join(sorted(unknown))}")
        hp.update(hyperparameters)
    return SuperResolution(ASUNet(bands, classes, scale, **hp), mean, std)


def to_class(transitions: torch.Tensor, classes: int) -> torch.Tensor:
    """`p(y_t = j) = Σ_i p(i → j)`: `[N, K², …]` → `[N, K, …]` (channel `i · K + j`)."""
    shape = transitions.shape
    return transitions.reshape(shape[0], classes, classes, *shape[2:]).sum(dim=1)


def transition_set_loss(log_p: torch.Tensor, target: torch.Tensor, classes: int,
                        previous: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the pixels with a target (≥ 0) of `−log p(allowed)`, the log probability
    of the set of transitions an annotation allows. `log_p` `[N, K², H, W]` (channel
    `i · K + j` is `i → j`), `target` `[N, H, W]` (−1 = no label, or masked).

    Without `previous` the set is `{i → target}` for every `i`. With it (`[N, H, W]`,
    the class the pixel had in the annotation before, −1 when none) the set is the
    **transition label set** of two annotations: `{target → target}`, and
    `{previous → target}` where they differ — a pixel kept its class, or changed from the
    earlier annotation's class; with no earlier annotation, it kept its class."""
    n, _, h, w = log_p.shape
    keep = target >= 0
    if not bool(keep.any()):
        return log_p.sum() * 0.0
    c = target.clamp(min=0)
    if previous is None:
        into = torch.logsumexp(log_p.reshape(n, classes, classes, h, w), dim=1)  # log p(y_t = j)
        picked = torch.gather(into, 1, c.unsqueeze(1)).squeeze(1)
        return -(picked[keep]).mean()
    stay = torch.gather(log_p, 1, (c * classes + c).unsqueeze(1)).squeeze(1)
    p = previous.clamp(min=0)
    change = torch.gather(log_p, 1, (p * classes + c).unsqueeze(1)).squeeze(1)
    changed = (previous >= 0) & (previous != target)
    picked = torch.where(changed, torch.logaddexp(stay, change), stay)
    return -(picked[keep]).mean()


def smoothness(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Temporal smoothness: `KL(p ‖ q)` between the transition probabilities of two
    consecutive dates, summed over the transitions, averaged over the pixels."""
    return (log_p.exp() * (log_p - log_q)).sum(dim=1).mean()


def viterbi(log_p: np.ndarray, classes: int) -> np.ndarray:
    """Module B: per pixel, the labels `y_0 … y_T` maximising `Σ_t log p_t(y_{t−1} → y_t)`
    over `log_p` `[T, K², …]` (date `t`'s transition into it; `y_{−1}` free: the first
    date's best "from"). Returns `[T, …]` class indices."""
    t_count = log_p.shape[0]
    rest = log_p.shape[2:]
    lp = log_p.reshape(t_count, classes, classes, -1)  # [T, from, to, P]
    score = lp[0].max(axis=0)  # [to, P]
    back = np.zeros((t_count, classes, lp.shape[-1]), dtype=np.int64)
    for t in range(1, t_count):
        total = score[:, None, :] + lp[t]  # [from, to, P]
        back[t] = total.argmax(axis=0)
        score = total.max(axis=0)
    out = np.zeros((t_count, lp.shape[-1]), dtype=np.int64)
    out[-1] = score.argmax(axis=0)
    for t in range(t_count - 1, 0, -1):
        out[t - 1] = np.take_along_axis(back[t], out[t][None, :], axis=0)[0]
    return out.reshape(t_count, *rest)


@dataclass
class SeriesData:
    """What training reads: the series `[T, B, H, W]` (memory-mapped view), its dates,
    the annotations `[A, H·s, W·s]` (class indices, −1 = none), their dates, the scale."""
    image: np.ndarray
    dates: list[str]
    bands: list[str]
    annotations: np.ndarray
    annotation_dates: list[str]
    scale: int
    classes: list[ClassInfo]


def annotated_targets(data: SeriesData, valid_days: int) -> dict[int, int]:
    """Series date index → the annotation valid for it (the nearest, at most `valid_days`
    away); dates without one are left out."""
    out = {}
    days = [day_of(d) for d in data.dates]
    for a, date in enumerate(data.annotation_dates):
        ad = day_of(date)
        for t, d in enumerate(days):
            if d is None or ad is None or abs(d - ad) > valid_days:
                continue
            if t not in out or abs(d - ad) < abs(days[t] - day_of(data.annotation_dates[out[t]])):
                out[t] = a
    return out


def window_of(image: np.ndarray, t: int, window: int, top: int, left: int, size: int) -> np.ndarray:
    """`[window · B, size, size]`: dates `t − window + 1 … t` (the first date repeated
    before the series starts), date-major, the patch reflected outside the scene."""
    idx = [max(0, t - window + 1 + k) for k in range(window)]
    h, w = image.shape[-2:]
    rows = _reflect(np.arange(top, top + size), h)
    cols = _reflect(np.arange(left, left + size), w)
    x = np.asarray(image[idx][:, :, rows[:, None], cols[None, :]])
    return x.reshape(-1, size, size)


def fine_window(a: np.ndarray, top: int, left: int, size: int, scale: int) -> np.ndarray:
    """The fine grid's pixels under the coarse window, each coarse pixel's block
    (mirrored by whole coarse pixels outside the scene)."""
    h, w = a.shape[-2] // scale, a.shape[-1] // scale
    rows = (_reflect(np.arange(top, top + size), h)[:, None] * scale + np.arange(scale)[None, :]).reshape(-1)
    cols = (_reflect(np.arange(left, left + size), w)[:, None] * scale + np.arange(scale)[None, :]).reshape(-1)
    return np.asarray(a[..., rows[:, None], cols[None, :]])


def missing_under(date: np.ndarray, top: int, left: int, size: int, scale: int) -> np.ndarray:
    """The fine pixels `[size·s, size·s]` under the coarse window whose HR pixel is
    missing on this date (`date` `[B, H, W]`: every band NaN — a cloud, a gap), each
    coarse pixel's whole block."""
    h, w = date.shape[-2:]
    rows = _reflect(np.arange(top, top + size), h)
    cols = _reflect(np.arange(left, left + size), w)
    missing = np.isnan(np.asarray(date)[:, rows[:, None], cols[None, :]]).all(axis=0)
    return np.repeat(np.repeat(missing, scale, axis=0), scale, axis=1)


@dataclass
class SrConfig:
    seed: int = 0
    epochs: int = 60
    patches_per_epoch: int = 128
    batch_size: int = 8
    patch: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 1e-6
    #: λ of the temporal smoothness term.
    smoothness: float = 0.1
    #: HR dates at most this many days from an annotation take it as their target.
    valid_days: int = 5
    patience: int = 10
    min_delta: float = 1e-3
    validation_patches: int = 32
    #: "random": validation and test on spatial blocks of every annotation; "time": the
    #: annotation dates in `test_dates` are left out of training entirely.
    split: str = "random"
    test_dates: list[str] = field(default_factory=list)
    test_fraction: float = 0.3
    block: int = 16
    hyperparameters: dict = field(default_factory=dict)
    #: Batches of training patches the batch-norm statistics are re-estimated on after
    #: training, with the kept weights (None: one epoch's; 0: keep the running averages).
    norm_batches: int | None = None


@dataclass
class SrResult:
    model: SuperResolution
    history: list[dict]
    best_epoch: int | None
    #: `[H, W]` coarse-grid role of each block: 0 fit, 1 validation, 2 test.
    roles: np.ndarray
    train_annotations: list[int]
    test_annotations: list[int]
    mean: np.ndarray
    std: np.ndarray


def block_roles(h: int, w: int, block: int, test_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Coarse pixels by `block` px blocks: `test_fraction` of the blocks test (2), a fifth
    of the rest validation (1), the others fit (0)."""
    bh, bw = -(-h // block), -(-w // block)
    draw = rng.random(bh * bw)
    roles = np.where(draw < test_fraction, 2, np.where(draw < test_fraction + (1 - test_fraction) * 0.2, 1, 0))
    grid = roles.reshape(bh, bw)
    return np.kron(grid, np.ones((block, block), np.int64))[:h, :w]


def train(data: SeriesData, config: SrConfig, emit: Callable[[dict], None] = lambda e: None) -> SrResult:
    seed_everything(config.seed)
    rng = np.random.default_rng(config.seed)
    t_count, b, h, w = data.image.shape
    s, k = data.scale, len(data.classes)
    hp = {**default_hyperparameters(), **config.hyperparameters}
    window = hp["window"]
    # Per band over every date (a date may be wholly clouded: its channel has no value).
    per_band = np.ascontiguousarray(np.asarray(data.image).transpose(1, 0, 2, 3)).reshape(b, t_count * h, w)
    mean, std = channel_statistics(per_band, rng)
    model = build(b, k, s, mean, std, config.hyperparameters)
    if config.patch % model.net.multiple:
        raise InputError(f"patch size {config.patch} is not a multiple of {model.net.multiple} (2^depth)")
    roles = block_roles(h, w, config.block, config.test_fraction if config.split == "random" else 0.0, rng)
    fine_roles = np.kron(roles, np.ones((s, s), np.int64))
    test_annotations = [a for a, d in enumerate(data.annotation_dates) if d in set(config.test_dates)]
    train_annotations = [a for a in range(len(data.annotation_dates)) if a not in test_annotations]
    targets = annotated_targets(data, config.valid_days)
    labelled = sorted(t for t, a in targets.items() if a in train_annotations and t >= 1)
    if not labelled:
        raise InputError(f"no series date lies within {config.valid_days} days of a training annotation "
                         f"({', '.join(data.annotation_dates[a] for a in train_annotations) or 'none'})")
    months = np.array([month_of(d) for d in data.dates], np.float32)
    # Per training annotation and role, each class's fine pixels: labelled patches pick a
    # class uniformly, then one of its pixels, and are centred there (seed 004's sampling:
    # the rare classes are seen, and patches fall where the labels are).
    pixels = {(a, role): [np.flatnonzero((data.annotations[a] == c) & (fine_roles == role)) for c in range(k)]
              for a in train_annotations for role in (0, 1)}
    # The annotation before each one (training annotations only), for transition sets.
    before = {a: (train_annotations[i - 1] if i > 0 else None) for i, a in enumerate(train_annotations)}

    def position(prng, t: int, role: int) -> tuple[int, int]:
        """A patch's corner: centred on a labelled pixel of a class drawn uniformly, for a
        labelled date; anywhere, for the others."""
        a = targets.get(t)
        if a in train_annotations:
            classes = [v for v in pixels[(a, role)] if len(v)]
            if classes:
                chosen = classes[prng.integers(len(classes))]
                r, c = divmod(int(chosen[prng.integers(len(chosen))]), w * s)
                r, c = r // s, c // s
                top = min(max(r - config.patch // 2, 0), max(h - config.patch, 0))
                left = min(max(c - config.patch // 2, 0), max(w - config.patch, 0))
                return top, left
        top = int(prng.integers(0, max(1, h - config.patch + 1))) if h >= config.patch else 0
        left = int(prng.integers(0, max(1, w - config.patch + 1))) if w >= config.patch else 0
        return top, left

    def sample(prng, role: int, labelled_only: bool = False):
        """A patch, a target date `t` (labelled three times in four) and `t + 1` (when
        there is one)."""
        if labelled_only or prng.random() < 0.75 or t_count < 3:
            t = int(labelled[prng.integers(len(labelled))])
        else:
            t = int(prng.integers(1, t_count))
        top, left = position(prng, t, role)
        pair = [t, min(t + 1, t_count - 1)]
        xs = [window_of(data.image, u, window, top, left, config.patch) for u in pair]
        a = targets.get(t)
        y = np.full((config.patch * s, config.patch * s), -1, np.int64)
        y_before = np.full_like(y, -1)
        if a is not None and a in train_annotations:
            y = fine_window(data.annotations[a], top, left, config.patch, s).astype(np.int64)
            if before[a] is not None:
                y_before = fine_window(data.annotations[before[a]], top, left, config.patch, s).astype(np.int64)
            y[fine_window(fine_roles, top, left, config.patch, s) != role] = -1
            # Masked loss on clouds: where the target date's HR pixel is missing.
            y[missing_under(data.image[t], top, left, config.patch, s)] = -1
        return xs, months[pair], y, y_before

    def batch_of(items):
        x0 = torch.from_numpy(np.stack([i[0][0] for i in items]).astype(np.float32))
        x1 = torch.from_numpy(np.stack([i[0][1] for i in items]).astype(np.float32))
        m = torch.from_numpy(np.stack([i[1] for i in items]).astype(np.float32))
        y = torch.from_numpy(np.stack([i[2] for i in items]))
        y_before = torch.from_numpy(np.stack([i[3] for i in items]))
        return x0, x1, m, y, y_before

    optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    patch_rng = np.random.default_rng([config.seed, 1])
    val_rng = np.random.default_rng([config.seed, 2])
    val = batch_of([sample(val_rng, 1, labelled_only=True) for _ in range(config.validation_patches)])

    def train_epoch() -> dict:
        model.train()
        totals = np.zeros(3)
        steps = 0
        for _ in range(0, config.patches_per_epoch, config.batch_size):
            x0, x1, m, y, y_before = batch_of([sample(patch_rng, 0) for _ in range(config.batch_size)])
            optimiser.zero_grad()
            lp0 = model.log_probabilities(x0, m[:, 0])
            ce = transition_set_loss(lp0, y, k, y_before)
            if config.smoothness > 0:
                kl = smoothness(lp0, model.log_probabilities(x1, m[:, 1]))
            else:
                kl = torch.zeros(())
            loss = ce + config.smoothness * kl
            loss.backward()
            optimiser.step()
            totals += [float(loss.detach()), float(ce.detach()), float(kl.detach())]
            steps += 1
        return {"train_loss": totals[0] / steps, "cross_entropy": totals[1] / steps, "smoothness": totals[2] / steps}

    def validate() -> dict:
        model.eval()
        with torch.no_grad():
            x0, x1, m, y, y_before = val
            lp0 = model.log_probabilities(x0, m[:, 0])
            val_loss = float(transition_set_loss(lp0, y, k, y_before))
            keep = y >= 0
            val_oa = float((to_class(lp0.exp(), k).argmax(1)[keep] == y[keep]).float().mean()) if keep.any() else None
        return {"val_loss": val_loss, "val_oa": val_oa}

    # A patience below 1 stops at the first epoch without a better loss, as 1 does.
    fit = fit_loop(model, config.epochs, train_epoch, validate, max(config.patience, 1), config.min_delta, emit)
    batches = max(1, config.patches_per_epoch // config.batch_size) if config.norm_batches is None else config.norm_batches
    if batches > 0:
        norm_rng = np.random.default_rng([config.seed, 3])
        recalibrate_norms(model, (batch_of([sample(norm_rng, 0) for _ in range(config.batch_size)])[:3]
                                  for _ in range(batches)))
    return SrResult(model=model, history=fit.history, best_epoch=fit.best_epoch, roles=roles,
                    train_annotations=train_annotations, test_annotations=test_annotations, mean=mean, std=std)


def recalibrate_norms(model: SuperResolution, batches) -> None:
    """Re-estimates every batch norm's running mean and variance with the model's final
    weights, as the plain average over `batches` of `(x0, x1, month)` training windows
    (both dates, as training sees them). The running averages kept while training mix
    statistics of earlier weights (momentum 0.1, the last few dozen steps); in eval mode
    that lag shifts every logit by a constant, and where the output is a boundary inside
    a 10 m pixel — a fine class probability crossing one half between fine pixels — a
    constant shift moves the boundary by whole fine pixels. Leaves the model in eval mode."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches
    model.train()
    try:
        with torch.no_grad():
            for x0, x1, month in batches:
                model.net(model.inputs(x0), month[:, 0])
                model.net(model.inputs(x1), month[:, 1])
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.eval()


def effective_tile(tile: int, overlap: int, h: int, w: int, multiple: int) -> int:
    """The tile side used: `tile`, or less for a scene smaller than one tile."""
    return min(tile, -(-(max(h, w) + 2 * overlap) // multiple) * multiple)


def predict_date(model: SuperResolution, image: np.ndarray, t: int, date: str, tile: int = 256,
                 overlap: int = 16) -> np.ndarray:
    """Transition probabilities `[K², H·s, W·s]` of date `t`, by tiles of `tile` px
    overlapping by `overlap` (centre crop), as the host predicts."""
    _, _, h, w = image.shape
    s, window, k2 = model.net.scale, model.net.window, model.net.classes ** 2
    tile = effective_tile(tile, overlap, h, w, model.net.multiple)
    core = tile - 2 * overlap
    out = np.zeros((k2, h * s, w * s), np.float32)
    month = torch.tensor([float(month_of(date))])
    model.eval()
    with torch.no_grad():
        for r in range(0, h, core):
            for q in range(0, w, core):
                x = window_of(image, t, window, r - overlap, q - overlap, tile)[None].astype(np.float32)
                p = model.probabilities(torch.from_numpy(x), month).numpy()[0]
                rh, qw = min(core, h - r), min(core, w - q)
                out[:, r * s:(r + rh) * s, q * s:(q + qw) * s] = \
                    p[:, overlap * s:(overlap + rh) * s, overlap * s:(overlap + qw) * s]
    return out


def predict_series(model: SuperResolution, image: np.ndarray, dates: list[str], tile: int = 256,
                   overlap: int = 16) -> np.ndarray:
    """Transition probabilities `[T, K², H·s, W·s]` of every date (small scenes: tests)."""
    return np.stack([predict_date(model, image, t, dates[t], tile, overlap) for t in range(len(dates))])


def predict_decode(model: SuperResolution, image: np.ndarray, dates: list[str], tile: int = 256,
                   overlap: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Each date's most probable label (`Σ_i p(i → j)`, no temporal model) and the Markov
    chain's consistent sequence, both `[T, H·s, W·s]` class indices: the Viterbi forward
    pass runs date by date (keeping `T × K` back-pointers per pixel, never every date's
    probabilities), then the back-tracking."""
    k = model.net.classes
    t_count = len(dates)
    labels, back, score = None, None, None
    for t in range(t_count):
        p = predict_date(model, image, t, dates[t], tile, overlap)
        hs, ws = p.shape[1:]
        if labels is None:
            labels = np.zeros((t_count, hs, ws), np.uint8)
            back = np.zeros((t_count, k, hs * ws), np.uint8)
        lp = np.log(np.maximum(p.reshape(k, k, -1), 1e-12))
        labels[t] = p.reshape(k, k, hs, ws).sum(axis=0).argmax(axis=0)
        if t == 0:
            score = lp.max(axis=0)
        else:
            total = score[:, None, :] + lp
            back[t] = total.argmax(axis=0)
            score = total.max(axis=0)
    markov = np.zeros_like(labels)
    current = score.argmax(axis=0)
    flat = markov.reshape(t_count, -1)
    flat[-1] = current
    for t in range(t_count - 1, 0, -1):
        current = np.take_along_axis(back[t], current[None, :].astype(np.int64), axis=0)[0]
        flat[t - 1] = current
    return labels, markov


def export_onnx(model: SuperResolution, path, opset: int) -> None:
    """Raw window `[N, window · B, H, W]` and month `[N]` → transition probabilities
    `[N, K², H·s, W·s]`, batch and sides dynamic."""
    import warnings

    import onnx

    module = TransitionProbabilities(model.eval()).eval()
    m = model.net.multiple
    example = (torch.zeros(1, model.net.window * model.net.bands, 2 * m, 2 * m), torch.ones(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(module, example, str(path), dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME, MONTH_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "N", 2: "H", 3: "W"}, MONTH_NAME: {0: "N"},
                                        OUTPUT_NAME: {0: "N", 2: "Hs", 3: "Ws"}},
                          do_constant_folding=True)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def onnx_max_abs_diff(path, model: SuperResolution, x: np.ndarray, month: np.ndarray) -> tuple[float, str] | None:
    from .export import ort_max_abs_diff

    x = np.ascontiguousarray(x, dtype=np.float32)
    month = np.ascontiguousarray(month, dtype=np.float32)
    with torch.no_grad():
        want = model.eval().probabilities(torch.from_numpy(x), torch.from_numpy(month)).numpy()
    return ort_max_abs_diff(path, x, want, output=OUTPUT_NAME, extra={MONTH_NAME: month})
