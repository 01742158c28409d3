"""FG-UNet (seed 004, Stoian et al. 2019): a U-Net over the series' dates × bands stacked
as channels, plus a fine-grained per-pixel path of 1×1 convolutions, trained on sparse
labels with 64 × 64 patches drawn on the fly.

Input `[N, C, H, W]` raw values (C = dates × bands, date-major; NaN = missing), output
softmax `[N, K, H, W]`. Normalisation (per channel, the training scene's statistics) and
NaN → 0 are inside the module, so inside the exported graph: the host feeds raw values.

The recipe (every point is the seed's):
- loss: cross-entropy weighted by class frequency (`N / (K · n_k)` over the training
  pixels); unlabelled pixels (code 0) and pixels of other splits add nothing;
- patches: each one picks a class uniformly at random, then a training pixel of that
  class, and is centred on it (clamped inside the scene, reflected when the scene is
  smaller); flips and 90° rotations (the 8 symmetries of the square);
- "patch normalisation": every patch is standardised per channel, with the statistics of
  the training scene rather than of the patch itself — per-patch statistics would make a
  pixel's class depend on the tile it falls in at inference, i.e. seams;
- split by polygon (parcel): the dataset's train / test polygons (the host's 66 % / 34 %),
  and within the training polygons 20 % per class for early stopping;
- seeded; under `torchrun` (DDP: gloo on CPU, NCCL on CUDA) each rank draws its own
  patches and gradients are averaged — the standard successor of the seed's Horovod.

Fusion (seed 003, SITS + very-high-resolution image): `FusionNet` has one encoder per
modality — FG-UNet over the series, `VhrEncoder` over the VHR image of the same place on
a grid `s` times finer (a block and a 2× pooling per halving, down to the series' grid)
— and fuses them late: their feature maps, concatenated on the series' grid, are
re-weighted channel by channel by a squeeze-and-excitation gate (the seed's outlook;
`fusion = "concat"` leaves it out) before the 1×1 head. The gate squeezes over a
`SE_WINDOW` px neighbourhood rather than the whole input, so a pixel's class does not
depend on the tile or patch it falls in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from .data import ClassInfo, InputError
from .patches import PatchDataset, split_polygons
from .train import distributed, fit_loop, seed_everything

ARCH = "fg-unet"


def default_hyperparameters() -> dict:
    return {"width": 32, "depth": 2, "pixel_width": 64, "dropout": 0.1}


def fusion_hyperparameters() -> dict:
    """The VHR branch's: its first width, and the fusion (`se` or `concat`)."""
    return {"vhr_width": 16, "fusion": "se"}


#: Side of the neighbourhood the squeeze-and-excitation gate averages over (series px).
SE_WINDOW = 15


class ChannelNormalise(nn.Module):
    """Per-channel standardisation with the training scene's statistics, then NaN → 0."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x - self.mean) / self.std
        return torch.where(torch.isnan(z), torch.zeros_like(z), z)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())


class FGUNet(nn.Module):
    """U-Net of `depth` poolings (widths `width · 2^level`) and a per-pixel path (two 1×1
    convolutions of `pixel_width`), concatenated before the 1×1 head: the U-Net brings
    context, the pixel path keeps the detail of sparse, thin parcels."""

    def __init__(self, channels: int, classes: int | None, width: int = 32, depth: int = 2, pixel_width: int = 64,
                 dropout: float = 0.1):
        super().__init__()
        if depth < 1 or width < 1 or pixel_width < 1:
            raise ValueError("width, depth and pixel_width must be ≥ 1")
        widths = [width * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList([_block(channels if i == 0 else widths[i - 1], widths[i]) for i in range(depth)])
        self.bottom = _block(widths[depth - 1], widths[depth])
        self.up = nn.ModuleList([nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in reversed(range(depth))])
        self.merge = nn.ModuleList([_block(2 * widths[i], widths[i]) for i in reversed(range(depth))])
        self.pixel = nn.Sequential(nn.Conv2d(channels, pixel_width, 1), nn.BatchNorm2d(pixel_width), nn.ReLU(),
                                   nn.Conv2d(pixel_width, pixel_width, 1), nn.BatchNorm2d(pixel_width), nn.ReLU())
        self.dropout = nn.Dropout2d(dropout)
        # No head inside a fusion network, which classifies the fused features.
        self.head = nn.Conv2d(width + pixel_width, classes, 1) if classes is not None else None
        self.pool = nn.MaxPool2d(2)
        self.multiple = 2**depth
        self.features_width = width + pixel_width

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(z)))

    def features(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's last level beside the pixel path, before the head."""
        skips = []
        x = z
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottom(x)
        for up, merge in zip(self.up, self.merge):
            x = merge(torch.cat([up(x), skips.pop()], dim=1))
        return torch.cat([x, self.pixel(z)], dim=1)


class VhrEncoder(nn.Module):
    """The VHR image's encoder: a block and a 2× max-pooling per halving from its grid
    (`scale` times finer, a power of two) down to the series' grid, widths doubling from
    `width`, then a block there. Output `[N, width · 2^levels, H, W]` on the series' grid."""

    def __init__(self, channels: int, scale: int, width: int):
        super().__init__()
        if scale < 1 or scale & (scale - 1):
            raise ValueError(f"the VHR scale {scale} must be a power of two (1, 2, 4, 8, …)")
        levels = scale.bit_length() - 1
        widths = [width * 2**i for i in range(levels + 1)]
        self.down = nn.ModuleList([_block(channels if i == 0 else widths[i - 1], widths[i]) for i in range(levels)])
        self.pool = nn.MaxPool2d(2)
        self.out = _block(channels if levels == 0 else widths[levels - 1], widths[levels])
        self.width = widths[levels]

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        for block in self.down:
            v = self.pool(block(v))
        return self.out(v)


class SqueezeExcitation(nn.Module):
    """Channel attention (Hu et al. 2018): each channel scaled by a gate computed from
    every channel's mean over a `window` px neighbourhood (`count_include_pad=False`, so
    the scene's edges are not darkened), through a bottleneck of `channels / reduction`."""

    def __init__(self, channels: int, reduction: int = 4, window: int = SE_WINDOW):
        super().__init__()
        self.squeeze = nn.AvgPool2d(window, stride=1, padding=window // 2, count_include_pad=False)
        self.excite = nn.Sequential(nn.Conv2d(channels, max(1, channels // reduction), 1), nn.ReLU(),
                                    nn.Conv2d(max(1, channels // reduction), channels, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.excite(self.squeeze(x))


class FusionNet(nn.Module):
    """Late fusion of the series (FG-UNet without its head) and the VHR image
    (`VhrEncoder`): their features concatenated on the series' grid, gated by
    squeeze-and-excitation (`fusion = "se"`) or not (`"concat"`), then the 1×1 head."""

    def __init__(self, channels: int, classes: int, vhr_channels: int, vhr_scale: int, width: int = 32,
                 depth: int = 2, pixel_width: int = 64, dropout: float = 0.1, vhr_width: int = 16,
                 fusion: str = "se"):
        super().__init__()
        if fusion not in ("se", "concat"):
            raise ValueError(f"fusion {fusion!r} is not 'se' or 'concat'")
        self.sits = FGUNet(channels, None, width, depth, pixel_width, dropout)
        self.vhr = VhrEncoder(vhr_channels, vhr_scale, vhr_width)
        fused = self.sits.features_width + self.vhr.width
        self.gate = SqueezeExcitation(fused) if fusion == "se" else nn.Identity()
        self.dropout = nn.Dropout2d(dropout)
        self.head = nn.Conv2d(fused, classes, 1)
        self.multiple = self.sits.multiple
        self.vhr_scale = vhr_scale

    def forward(self, z: torch.Tensor, zv: torch.Tensor) -> torch.Tensor:
        fused = torch.cat([self.sits.features(z), self.vhr(zv)], dim=1)
        return self.head(self.dropout(self.gate(fused)))


class Segmenter(nn.Module):
    """Normalisation + FG-UNet (or + the fusion network, with the VHR image's own
    normalisation). `forward` gives logits, `probabilities` the softmax."""

    def __init__(self, net: nn.Module, mean, std, vhr_mean=None, vhr_std=None):
        super().__init__()
        self.normalise = ChannelNormalise(torch.as_tensor(mean), torch.as_tensor(std))
        self.normalise_vhr = (ChannelNormalise(torch.as_tensor(vhr_mean), torch.as_tensor(vhr_std))
                              if vhr_mean is not None else None)
        self.net = net

    @property
    def fusion(self) -> bool:
        return self.normalise_vhr is not None

    def forward(self, x: torch.Tensor, v: torch.Tensor | None = None) -> torch.Tensor:
        if self.normalise_vhr is None:
            return self.net(self.normalise(x))
        return self.net(self.normalise(x), self.normalise_vhr(v))

    def probabilities(self, x: torch.Tensor, v: torch.Tensor | None = None) -> torch.Tensor:
        return torch.softmax(self.forward(x, v), dim=1)


class SegmentationProbabilities(nn.Module):
    """What the ONNX graph computes: raw `[N, C, H, W]` (and raw VHR `[N, V, H·s, W·s]`
    for a fusion network) → softmax `[N, K, H, W]`."""

    def __init__(self, segmenter: Segmenter):
        super().__init__()
        self.segmenter = segmenter

    def forward(self, x: torch.Tensor, *vhr: torch.Tensor) -> torch.Tensor:
        return self.segmenter.probabilities(x, *vhr)


@dataclass
class VhrInput:
    """A fusion network's second input: the VHR image's channels, scale and statistics."""
    channels: int
    scale: int
    mean: list
    std: list


def build(channels: int, classes: int, mean, std, hyperparameters: dict | None = None,
          vhr: VhrInput | None = None) -> Segmenter:
    hp = default_hyperparameters()
    allowed = {**hp, **fusion_hyperparameters()}
    if hyperparameters:
        unknown = set(hyperparameters) - set(allowed)
        if unknown:
            raise ValueError(f"unknown {ARCH} hyperparameter(s) {', '.join(sorted(unknown))}")
        hp.update(hyperparameters)
    fusion = {key: hp.pop(key) for key in fusion_hyperparameters() if key in hp}
    if vhr is None:
        return Segmenter(FGUNet(channels, classes, **hp), mean, std)
    net = FusionNet(channels, classes, vhr.channels, vhr.scale, **hp, **{**fusion_hyperparameters(), **fusion})
    return Segmenter(net, mean, std, vhr.mean, vhr.std)


@dataclass
class SegmentationConfig:
    seed: int = 0
    epochs: int = 100
    #: Patches drawn per epoch (over all ranks).
    patches_per_epoch: int = 256
    batch_size: int = 16
    patch: int = 64
    patience: int = 10
    min_delta: float = 1e-3
    learning_rate: float = 1e-3
    weight_decay: float = 1e-6
    #: Share of the training polygons (per class) that decide early stopping.
    validation_fraction: float = 0.2
    #: Share of the polygons held out for the test when the dataset records no split.
    test_fraction: float = 0.34
    validation_patches: int = 32
    tile: int = 512
    overlap: int = 16
    hyperparameters: dict = field(default_factory=dict)
    #: Share of each class's fitting pixels kept (seed 003's label budgets: 0.01, 0.1, 1).
    budget: float = 1.0
    #: "channel": each `BAND@DATE` channel standardised with its own statistics (the
    #: seed's); "band": with its band's, pooled over the dates (`pool_by_band`).
    normalise: str = "channel"


@dataclass
class SegmentationResult:
    segmenter: Segmenter
    classes: list[ClassInfo]
    #: Class index per pixel (-1 unlabelled) of each split.
    fit_targets: np.ndarray
    validation_targets: np.ndarray
    test_targets: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    class_weights: np.ndarray
    history: list[dict]
    best_epoch: int | None
    stopped_early: bool
    split: dict
    world_size: int


def channel_statistics(image: np.ndarray, rng: np.random.Generator, max_pixels: int = 1 << 18,
                       channels_at_once: int = 16):
    """Per-channel mean and std over (a seeded sample of) the scene's pixels, NaN ignored:
    the input's statistics, which need no label. A few channels at a time, so a large
    memory-mapped cube is never whole in memory."""
    c, h, w = image.shape
    n = h * w
    index = np.sort(rng.choice(n, size=max_pixels, replace=False)) if n > max_pixels else None
    mean, std = np.empty(c, np.float32), np.empty(c, np.float32)
    for start in range(0, c, channels_at_once):
        block = np.asarray(image[start:start + channels_at_once]).reshape(-1, n)
        if index is not None:
            block = block[:, index]
        block = block.astype(np.float64)
        empty = np.flatnonzero(~(~np.isnan(block)).any(axis=1))
        if len(empty):
            raise InputError(f"channel {start + empty[0]} has no valid value in the scene")
        mean[start:start + len(block)] = np.nanmean(block, axis=1)
        sd = np.nanstd(block, axis=1)
        std[start:start + len(block)] = np.where(sd > 0, sd, 1.0)
    return mean, std


def pool_by_band(mean: np.ndarray, std: np.ndarray, channels: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Channel statistics pooled over the dates of each band (channels `BAND@DATE`): every
    channel of a band gets the band's mean and std over all its dates (the mixture of the
    channels' distributions, each weighted alike). A network normalised this way sees
    another year's shifted season on the same scale as its training year's, instead of
    each date standardised by its own statistics."""
    bands = [c.split("@", 1)[0] for c in channels]
    if len(bands) != len(mean):
        raise InputError(f"{len(channels)} channel names for {len(mean)} channels")
    pooled_mean, pooled_std = mean.astype(np.float64).copy(), std.astype(np.float64).copy()
    for band in dict.fromkeys(bands):
        members = np.array([i for i, b in enumerate(bands) if b == band])
        m = mean[members].astype(np.float64)
        centre = m.mean()
        variance = (std[members].astype(np.float64) ** 2 + (m - centre) ** 2).mean()
        pooled_mean[members] = centre
        pooled_std[members] = np.sqrt(variance) if variance > 0 else 1.0
    return pooled_mean.astype(np.float32), pooled_std.astype(np.float32)


def _window(a: np.ndarray, top: int, left: int, size: int) -> np.ndarray:
    """`a[..., top:top+size, left:left+size]`, reflected where it leaves the array."""
    h, w = a.shape[-2:]
    rows = _reflect(np.arange(top, top + size), h)
    cols = _reflect(np.arange(left, left + size), w)
    return np.asarray(a[..., rows[:, None], cols[None, :]])


def _reflect(i: np.ndarray, n: int) -> np.ndarray:
    """Indices mirrored into 0..n (without repeating the edge), as the host pads."""
    if n == 1:
        return np.zeros_like(i)
    period = 2 * (n - 1)
    i = np.mod(i, period)
    return np.where(i < n, i, period - i)


def draw_patch(rng: np.random.Generator, dataset: PatchDataset, targets: np.ndarray, by_class: list[np.ndarray],
               size: int, vhr: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """One training patch: a class at random, a pixel of it, the patch centred there (kept
    inside the scene when it fits), one of the square's 8 symmetries; with `vhr`, the VHR
    image's window over the same place (`size · s` px) turned the same way. The draws do
    not depend on `vhr`: a fusion network and a series-only one see the same patches."""
    h, w = targets.shape
    candidates = [c for c in range(len(by_class)) if len(by_class[c])]
    cls = candidates[rng.integers(len(candidates))]
    pixel = int(by_class[cls][rng.integers(len(by_class[cls]))])
    r, c = divmod(pixel, w)
    top = min(max(r - size // 2, 0), max(h - size, 0)) if h >= size else r - size // 2
    left = min(max(c - size // 2, 0), max(w - size, 0)) if w >= size else c - size // 2
    x = _window(dataset.image, top, left, size)
    y = _window(targets, top, left, size)
    s = dataset.vhr_scale
    v = _vhr_window(dataset.vhr, top, left, size, s) if vhr else None
    k = int(rng.integers(4))
    flip = bool(rng.integers(2))
    x, y = np.rot90(x, k, axes=(1, 2)), np.rot90(y, k)
    if v is not None:
        v = np.rot90(v, k, axes=(1, 2))
    if flip:
        x, y = x[:, :, ::-1], y[:, ::-1]
        v = None if v is None else v[:, :, ::-1]
    return (np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(y, dtype=np.int64),
            None if v is None else np.ascontiguousarray(v, dtype=np.float32))


def _vhr_window(vhr: np.ndarray, top: int, left: int, size: int, scale: int) -> np.ndarray:
    """The VHR pixels under the series window at (`top`, `left`) of `size` px: each
    series pixel's `scale × scale` block, reflected by whole series pixels where the window
    leaves the scene (so a block stays the block of the series pixel it mirrors), as the
    host reads a tile's VHR input."""
    h, w = vhr.shape[1] // scale, vhr.shape[2] // scale
    rows = (_reflect(np.arange(top, top + size), h)[:, None] * scale + np.arange(scale)[None, :]).reshape(-1)
    cols = (_reflect(np.arange(left, left + size), w)[:, None] * scale + np.arange(scale)[None, :]).reshape(-1)
    return np.asarray(vhr[:, rows[:, None], cols[None, :]])


def predict_scene(segmenter: Segmenter, image: np.ndarray, tile: int, overlap: int, batch: int = 1,
                  vhr: np.ndarray | None = None) -> np.ndarray:
    """`[K, H, W]` probabilities of a whole scene by tiles of `tile` px overlapping by
    `overlap` on each side, each tile's centre kept — the algorithm the host runs
    (`host/recipes/src/segment.rs`), so metrics computed here describe the exported model. A
    fusion network also takes each tile's VHR window (`vhr` `[V, H·s, W·s]`)."""
    c, h, w = image.shape
    tile = effective_tile(tile, overlap, h, w, segmenter.net.multiple)
    core = tile - 2 * overlap
    origins = [(r, q) for r in range(0, h, core) for q in range(0, w, core)]
    out = None
    segmenter.eval()
    with torch.no_grad():
        for s in range(0, len(origins), batch):
            part = origins[s:s + batch]
            x = np.stack([_window(image, r - overlap, q - overlap, tile) for r, q in part]).astype(np.float32)
            inputs = [torch.from_numpy(x)]
            if segmenter.fusion:
                s = vhr.shape[1] // h
                inputs.append(torch.from_numpy(np.stack([_vhr_window(vhr, r - overlap, q - overlap, tile, s)
                                                         for r, q in part]).astype(np.float32)))
            p = segmenter.probabilities(*inputs).numpy()
            if out is None:
                out = np.zeros((p.shape[1], h, w), dtype=np.float32)
            for (r, q), pt in zip(part, p):
                rh, qw = min(core, h - r), min(core, w - q)
                out[:, r:r + rh, q:q + qw] = pt[:, overlap:overlap + rh, overlap:overlap + qw]
    return out


def effective_tile(tile: int, overlap: int, h: int, w: int, multiple: int) -> int:
    """The tile side actually used: `tile`, or less for a scene smaller than one tile
    (its side plus the overlaps, rounded up to what the poolings divide)."""
    need = max(h, w) + 2 * overlap
    return min(tile, -(-need // multiple) * multiple)


def _targets(dataset: PatchDataset, classes: list[ClassInfo], keep_groups: set[int]) -> np.ndarray:
    index = np.full(65536, -1, dtype=np.int64)
    for i, c in enumerate(classes):
        index[c.code] = i
    labels = np.asarray(dataset.labels)
    t = index[labels]
    t[~np.isin(np.asarray(dataset.groups), np.fromiter(keep_groups, dtype=np.int64, count=len(keep_groups)))] = -1
    return t


def keep_budget(fit: np.ndarray, classes: int, budget: float, rng: np.random.Generator) -> np.ndarray:
    """`fit` with only `budget` of each class's pixels left (at least one per class),
    drawn at random; the others become unlabelled (-1)."""
    if not 0 < budget <= 1:
        raise InputError(f"label budget {budget} is not in (0, 1]")
    if budget == 1:
        return fit
    flat = fit.reshape(-1)
    out = np.full_like(flat, -1)
    for i in range(classes):
        index = np.flatnonzero(flat == i)
        if len(index):
            keep = rng.choice(index, size=max(1, math.ceil(budget * len(index))), replace=False)
            out[keep] = i
    return out.reshape(fit.shape)


def load_pretrained_encoder(segmenter: Segmenter, encoder: tuple[dict, dict]) -> None:
    """Starts `segmenter` from a SimCLR encoder (`ssl.load_encoder`): its normalisation,
    down blocks and bottom; the decoder, pixel path and head stay as initialised."""
    config, state = encoder
    net = segmenter.net
    hp = config["hyperparameters"]
    if config["channels"] != segmenter.normalise.mean.shape[1]:
        raise InputError(f"the pretrained encoder takes {config['channels']} channels, the dataset has "
                         f"{segmenter.normalise.mean.shape[1]}")
    if (hp["width"], hp["depth"]) != (net.down[0][0].out_channels, len(net.down)):
        raise InputError(f"the pretrained encoder has width {hp['width']} and depth {hp['depth']}; the network "
                         f"width {net.down[0][0].out_channels} and depth {len(net.down)}")
    segmenter.normalise.load_state_dict({k[len("normalise."):]: v for k, v in state.items() if k.startswith("normalise.")})
    net.down.load_state_dict({k[len("down."):]: v for k, v in state.items() if k.startswith("down.")})
    net.bottom.load_state_dict({k[len("bottom."):]: v for k, v in state.items() if k.startswith("bottom.")})


def train_segmentation(dataset: PatchDataset, config: SegmentationConfig,
                       emit: Callable[[dict], None] = lambda event: None,
                       encoder: tuple[dict, dict] | None = None, fusion: bool = False) -> SegmentationResult:
    """Trains FG-UNet on `dataset` (from `encoder` when given), or with `fusion` the
    fusion network on the series and the dataset's VHR image."""
    rank, world = distributed()
    if fusion and dataset.vhr is None:
        raise InputError(f"{dataset.path}: fusion needs a VHR image (vhr.npy) in the patch dataset")
    if fusion and encoder is not None:
        raise InputError("a fusion network starts from scratch; train the pretrained encoder without fusion")
    seed_everything(config.seed)
    rng = np.random.default_rng(config.seed)
    labels, groups = np.asarray(dataset.labels), np.asarray(dataset.groups)
    if dataset.train_groups is not None:
        train_groups, test_groups = dataset.train_groups, dataset.test_groups or set()
        rule = dataset.split_rule or "given"
    else:
        train_groups, test_groups = split_polygons(labels, groups, config.test_fraction, rng)
        rule = f"{1 - config.test_fraction:.0%} / {config.test_fraction:.0%} of each class's polygons, seeded"
    in_train = np.isin(groups, np.fromiter(train_groups, dtype=np.int64, count=len(train_groups)))
    fit_groups, validation_groups = split_polygons(np.where(in_train, labels, 0), groups,
                                                   config.validation_fraction, rng)
    present = set(np.unique(labels[in_train & (labels > 0)]).tolist())
    classes = [c for c in dataset.classes if c.code in present]
    if len(classes) < 2:
        raise InputError(f"{dataset.path}: at least two classes with training pixels are needed, found "
                         f"{len(classes)}")
    fit = keep_budget(_targets(dataset, classes, fit_groups), len(classes), config.budget,
                      np.random.default_rng([config.seed, 2 << 20]))
    # The budget holds for every label the training sees, early stopping's included.
    validation = keep_budget(_targets(dataset, classes, validation_groups), len(classes), config.budget,
                             np.random.default_rng([config.seed, 3 << 20]))
    test = _targets(dataset, classes, test_groups)
    mean, std = channel_statistics(dataset.image, rng)
    if config.normalise == "band":
        mean, std = pool_by_band(mean, std, dataset.channels)
    counts = np.bincount(fit[fit >= 0], minlength=len(classes)).astype(np.float64)
    weights = np.where(counts > 0, counts.sum() / (len(classes) * np.maximum(counts, 1)), 0.0).astype(np.float32)
    vhr_input = None
    if fusion:
        vhr_mean, vhr_std = channel_statistics(dataset.vhr, np.random.default_rng([config.seed, 4 << 20]))
        vhr_input = VhrInput(len(dataset.vhr_channels), dataset.vhr_scale, vhr_mean.tolist(), vhr_std.tolist())
    segmenter = build(len(dataset.channels), len(classes), mean, std, config.hyperparameters, vhr_input)
    if encoder is not None:
        load_pretrained_encoder(segmenter, encoder)
        mean, std = segmenter.normalise.mean.reshape(-1).numpy(), segmenter.normalise.std.reshape(-1).numpy()
    if config.patch % segmenter.net.multiple:
        raise InputError(f"patch size {config.patch} is not a multiple of {segmenter.net.multiple} (2^depth)")
    model: nn.Module = segmenter
    if world > 1:
        model = nn.parallel.DistributedDataParallel(segmenter)
    loss_fn = nn.CrossEntropyLoss(weight=torch.from_numpy(weights), ignore_index=-1)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    by_class = [np.flatnonzero(fit.reshape(-1) == i) for i in range(len(classes))]
    # Each rank its own stream of patches; the validation patches are the same everywhere.
    patch_rng = np.random.default_rng([config.seed, rank])
    validation_by_class = [np.flatnonzero(validation.reshape(-1) == i) for i in range(len(classes))]
    has_validation = any(len(v) for v in validation_by_class)
    val_rng = np.random.default_rng([config.seed, 1 << 20])
    val_patches = [draw_patch(val_rng, dataset, validation, validation_by_class, config.patch, fusion)
                   for _ in range(config.validation_patches)] if has_validation else []

    def tensors(patches):
        """The network's inputs and the targets of a list of patches."""
        inputs = [torch.from_numpy(np.stack([p[0] for p in patches]))]
        if fusion:
            inputs.append(torch.from_numpy(np.stack([p[2] for p in patches])))
        return inputs, torch.from_numpy(np.stack([p[1] for p in patches]))

    per_rank = max(config.batch_size, config.patches_per_epoch // world)

    def train_epoch() -> dict:
        model.train()
        total, seen = 0.0, 0
        for _ in range(0, per_rank, config.batch_size):
            batch = [draw_patch(patch_rng, dataset, fit, by_class, config.patch, fusion)
                     for _ in range(config.batch_size)]
            inputs, y = tensors(batch)
            optimiser.zero_grad()
            loss = loss_fn(model(*inputs), y)
            loss.backward()
            optimiser.step()
            labelled = int((y >= 0).sum())
            total += loss.item() * labelled
            seen += labelled
        return {"train_loss": total / seen if seen else None}

    def validate() -> dict | None:
        # Rank 0 alone validates and decides; the others stop when it says so.
        if rank != 0 or not has_validation:
            return None
        segmenter.eval()
        with torch.no_grad():
            vx, vy = tensors(val_patches)
            logits = segmenter(*vx)
            val_loss = float(loss_fn(logits, vy))
            keep = vy >= 0
            val_oa = float((logits.argmax(1)[keep] == vy[keep]).float().mean())
        return {"val_loss": val_loss, "val_oa": val_oa}

    fit_result = fit_loop(segmenter, config.epochs, train_epoch, validate, config.patience, config.min_delta, emit,
                          rank, world)
    split = {"rule": rule, "train_polygons": len(train_groups), "test_polygons": len(test_groups),
             "fit_polygons": len(fit_groups), "validation_polygons": len(validation_groups),
             "fit_pixels": int((fit >= 0).sum()), "validation_pixels": int((validation >= 0).sum()),
             "test_pixels": int((test >= 0).sum())}
    return SegmentationResult(segmenter=segmenter, classes=classes, fit_targets=fit, validation_targets=validation,
                              test_targets=test, mean=mean, std=std, class_weights=weights,
                              history=fit_result.history, best_epoch=fit_result.best_epoch,
                              stopped_early=fit_result.stopped_early, split=split, world_size=world)


#: The ONNX input name of a fusion network's VHR tile.
VHR_INPUT_NAME = "vhr"


def export_onnx(segmenter: Segmenter, channels: int, path, opset: int, input_name: str, output_name: str) -> None:
    """Raw `[N, C, H, W]` (and a fusion network's raw VHR `[N, V, H·s, W·s]`, named
    `vhr`) → softmax `[N, K, H, W]`, batch and sides dynamic (H and W multiples of
    2^depth)."""
    import warnings

    import onnx

    module = SegmentationProbabilities(segmenter.eval()).eval()
    m = segmenter.net.multiple
    example = (torch.zeros(1, channels, 4 * m, 4 * m),)
    names, axes = [input_name], {input_name: {0: "N", 2: "H", 3: "W"}}
    if segmenter.fusion:
        s = segmenter.net.vhr_scale
        example += (torch.zeros(1, segmenter.normalise_vhr.mean.shape[1], 4 * m * s, 4 * m * s),)
        names.append(VHR_INPUT_NAME)
        axes[VHR_INPUT_NAME] = {0: "N", 2: "Hs", 3: "Ws"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(module, example, str(path), dynamo=False, opset_version=opset,
                          input_names=names, output_names=[output_name],
                          dynamic_axes={**axes, output_name: {0: "N", 2: "H", 3: "W"}},
                          do_constant_folding=True)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def onnxruntime_max_abs_diff(path, segmenter: Segmenter, tiles: np.ndarray,
                             vhr_tiles: np.ndarray | None = None) -> tuple[float, str] | None:
    """Largest |ONNX Runtime − PyTorch| probability on `tiles` `[N, C, H, W]` (and a
    fusion network's `vhr_tiles`); None when onnxruntime is not importable."""
    from .export import ort_max_abs_diff

    x = np.ascontiguousarray(tiles, dtype=np.float32)
    inputs = [torch.from_numpy(x)]
    extra = {}
    if segmenter.fusion:
        v = np.ascontiguousarray(vhr_tiles, dtype=np.float32)
        inputs.append(torch.from_numpy(v))
        extra[VHR_INPUT_NAME] = v
    with torch.no_grad():
        want = segmenter.eval().probabilities(*inputs).numpy()
    return ort_max_abs_diff(path, x, want, extra=extra)


def save_checkpoint(path, segmenter: Segmenter, config: dict) -> None:
    torch.save({"config": config, "state_dict": segmenter.state_dict()}, str(path))


def load_checkpoint(path) -> tuple[Segmenter, dict]:
    checkpoint = torch.load(str(path), map_location="cpu", weights_only=True)
    config = checkpoint["config"]
    vhr = VhrInput(**config["vhr"]) if config.get("vhr") else None
    segmenter = build(config["channels"], config["classes"], config["mean"], config["std"], config["hyperparameters"],
                      vhr)
    segmenter.load_state_dict(checkpoint["state_dict"])
    return segmenter.eval(), config
