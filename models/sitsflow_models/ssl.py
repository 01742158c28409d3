"""SimCLR self-supervised pretraining (seed 003; Chen et al. 2020) of the FG-UNet
encoder on views the host makes with a sandboxed augmenter component.

- **Encoder** `f(·)`: FG-UNet's contracting path (its `down` blocks and `bottom`), with
  the channel normalisation in front — the very modules a fine-tuned FG-UNet starts
  from (`load_encoder`). `h` is the bottom feature map, averaged over space.
- **Projection** `g(·)`: a 2-layer MLP with ReLU (the seed's "2-layers FCN"), `z = g(h)`.
- **Loss**: NT-Xent (`nt_xent`): for a batch of N pairs, 2N views; for the positive pair
  (i, j), `ℓ(i,j) = −log exp(sim(z_i,z_j)/τ) / Σ_{k≠i} exp(sim(z_i,z_k)/τ)` with cosine
  similarity and temperature τ, averaged over all 2N anchors.
- **Optimiser**: SGD, learning rate 0.001 (the seed's; settable), momentum settable.
- **Views** arrive on a stream in the `sitsflow-views/1` contract (`read_views`): a JSON
  header line, then per batch a JSON line and the two views' float32 bytes. The host
  writes it as the augmenter produces the views, so memory holds a few batches whatever
  the number of epochs.

The exported encoder (`export_encoder`) maps raw `[N, C, H, W]` (NaN = missing) to the
feature map `[N, F, H/2^depth, W/2^depth]`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data import InputError
from .segmentation import ChannelNormalise, FGUNet, default_hyperparameters

ARCH = "simclr"
VIEWS_CONTRACT = "sitsflow-views/1"
FEATURES_NAME = "features"


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent over a batch of N positive pairs (rows of `z1` and `z2`)."""
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = z @ z.T / temperature
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, targets)


class Encoder(nn.Module):
    """Normalisation + FG-UNet's contracting path: raw `[N, C, H, W]` → bottom map."""

    def __init__(self, channels: int, mean, std, width: int, depth: int):
        super().__init__()
        unet = FGUNet(channels, 2, width=width, depth=depth)
        self.normalise = ChannelNormalise(torch.as_tensor(mean), torch.as_tensor(std))
        self.down, self.bottom, self.pool = unet.down, unet.bottom, unet.pool
        self.multiple = unet.multiple
        self.out_channels = width * 2**depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.levels(x)[1]

    def levels(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The first level's map (full resolution, `width` channels) and the bottom map."""
        x = self.normalise(x)
        first = None
        for block in self.down:
            x = block(x)
            if first is None:
                first = x
            x = self.pool(x)
        return first, self.bottom(x)


class Embeddings(nn.Module):
    """Per-pixel features of the encoder, `[N, width + F, H, W]`: its first level's map
    and its bottom map upsampled bilinearly to the input's grid — what the host writes as
    a features raster (e.g. for a random forest on self-supervised features)."""

    def __init__(self, encoder: Encoder):
        super().__init__()
        self.encoder = encoder
        self.channels = encoder.down[0][0].out_channels + encoder.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, bottom = self.encoder.levels(x)
        up = F.interpolate(bottom, size=first.shape[-2:], mode="bilinear", align_corners=False)
        return torch.cat([first, up], dim=1)


class SimCLR(nn.Module):
    def __init__(self, encoder: Encoder, projection_dim: int):
        super().__init__()
        self.encoder = encoder
        f = encoder.out_channels
        self.projection = nn.Sequential(nn.Linear(f, f), nn.ReLU(), nn.Linear(f, projection_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(x).mean(dim=(2, 3))
        return self.projection(h)


@dataclass
class ViewsHeader:
    channels: list[str]
    bands: list[str]
    dates: list[str]
    patch: int
    epochs: int
    batches_per_epoch: int
    batch_size: int
    mean: list[float]
    std: list[float]
    source: dict = field(default_factory=dict)


def read_views(stream: BinaryIO) -> tuple[ViewsHeader, Iterator[tuple[int, np.ndarray, np.ndarray]]]:
    """The header, and an iterator of `(epoch, first, second)` batches (`[n, C, P, P]`
    float32 each) read from `stream` as they come."""
    line = stream.readline()
    if not line:
        raise InputError("the views stream is empty (no sitsflow-views/1 header)")
    try:
        meta = json.loads(line)
    except json.JSONDecodeError as e:
        raise InputError(f"views header: not JSON ({e.msg})") from None
    if meta.get("contract") != VIEWS_CONTRACT:
        raise InputError(f"views header: contract {meta.get('contract')!r} is not {VIEWS_CONTRACT!r}")
    try:
        header = ViewsHeader(channels=list(meta["channels"]), bands=list(meta["bands"]), dates=list(meta["dates"]),
                             patch=int(meta["patch"]), epochs=int(meta["epochs"]),
                             batches_per_epoch=int(meta["batches_per_epoch"]), batch_size=int(meta["batch_size"]),
                             mean=list(map(float, meta["mean"])), std=list(map(float, meta["std"])),
                             source=meta.get("source", {}))
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"views header: {e!r} missing or malformed") from None
    c, p = len(header.channels), header.patch
    if len(header.mean) != c or len(header.std) != c:
        raise InputError(f"views header: {len(header.mean)} means and {len(header.std)} stds for {c} channels")

    def batches():
        expected = header.epochs * header.batches_per_epoch
        for index in range(expected):
            line = stream.readline()
            if not line:
                raise InputError(f"the views stream ended after {index} of {expected} batches")
            frame = json.loads(line)
            if frame.get("batch") != index:
                raise InputError(f"views stream: batch {frame.get('batch')} where {index} was due")
            n = int(frame["count"])
            size = n * c * p * p
            raw = stream.read(2 * size * 4)
            if len(raw) != 2 * size * 4:
                raise InputError(f"views stream: batch {index} has {len(raw)} of {2 * size * 4} bytes")
            both = np.frombuffer(raw, dtype="<f4").reshape(2, n, c, p, p)
            yield int(frame["epoch"]), both[0], both[1]
        tail = stream.readline()
        if tail and json.loads(tail).get("end") is not True:
            raise InputError("views stream: more data after the last batch")

    return header, batches()


def write_views(stream: BinaryIO, header: ViewsHeader, batches) -> None:
    """The writer side (tests and views made outside the host)."""
    meta = {"contract": VIEWS_CONTRACT, "channels": header.channels, "bands": header.bands, "dates": header.dates,
            "patch": header.patch, "epochs": header.epochs, "batches_per_epoch": header.batches_per_epoch,
            "batch_size": header.batch_size, "mean": header.mean, "std": header.std, "source": header.source}
    stream.write((json.dumps(meta) + "\n").encode())
    for index, (epoch, first, second) in enumerate(batches):
        stream.write((json.dumps({"batch": index, "epoch": epoch, "count": len(first)}) + "\n").encode())
        stream.write(np.ascontiguousarray(np.stack([first, second]), dtype="<f4").tobytes())
    stream.write(b'{"end": true}\n')


@dataclass
class PretrainConfig:
    seed: int = 0
    temperature: float = 0.1
    learning_rate: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 1e-6
    projection_dim: int = 64
    hyperparameters: dict = field(default_factory=dict)


@dataclass
class PretrainResult:
    model: SimCLR
    hyperparameters: dict
    history: list[dict]
    views_seen: int
    #: Seconds spent waiting for the next batch of views (the stream's share of the time).
    waiting_seconds: float = 0.0


def pretrain(header: ViewsHeader, batches, config: PretrainConfig,
             emit: Callable[[dict], None] = lambda event: None) -> PretrainResult:
    hp = {**default_hyperparameters(), **config.hyperparameters}
    if not 0 < config.temperature:
        raise InputError(f"temperature {config.temperature} must be > 0")
    if header.patch % 2 ** hp["depth"]:
        raise InputError(f"patch {header.patch} is not a multiple of {2 ** hp['depth']} (2^depth)")
    torch.manual_seed(config.seed)
    encoder = Encoder(len(header.channels), header.mean, header.std, hp["width"], hp["depth"])
    model = SimCLR(encoder, config.projection_dim)
    optimiser = torch.optim.SGD(model.parameters(), lr=config.learning_rate, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    history: list[dict] = []
    current, total, count, seen = None, 0.0, 0, 0
    model.train()

    def close(epoch):
        event = {"event": "epoch", "epoch": epoch, "epochs": header.epochs, "train_loss": total / max(count, 1)}
        history.append(event)
        emit(event)

    import time

    waiting = 0.0
    stream = iter(batches)
    while True:
        asked = time.perf_counter()
        try:
            epoch, first, second = next(stream)
        except StopIteration:
            break
        waiting += time.perf_counter() - asked
        if current is not None and epoch != current:
            close(current)
            total, count = 0.0, 0
        current = epoch
        if len(first) < 2:
            continue  # one pair has no negatives
        x1, x2 = torch.from_numpy(np.array(first)), torch.from_numpy(np.array(second))
        optimiser.zero_grad()
        loss = nt_xent(model(x1), model(x2), config.temperature)
        loss.backward()
        optimiser.step()
        total += float(loss) * len(first)
        count += len(first)
        seen += 2 * len(first)
    if current is not None:
        close(current)
    model.eval()
    return PretrainResult(model=model, hyperparameters=hp, history=history, views_seen=seen, waiting_seconds=waiting)


def save_encoder(path, encoder: Encoder, config: dict) -> None:
    torch.save({"config": config, "state_dict": encoder.state_dict()}, str(path))


def load_encoder(path) -> tuple[dict, dict]:
    """The encoder checkpoint's config and state (normalisation, down blocks, bottom)."""
    checkpoint = torch.load(str(path), map_location="cpu", weights_only=True)
    if checkpoint.get("config", {}).get("arch") != ARCH:
        raise InputError(f"{path}: not a {ARCH} encoder checkpoint")
    return checkpoint["config"], checkpoint["state_dict"]


EMBEDDINGS_NAME = "embeddings"


def export_encoder(module: nn.Module, multiple: int, channels: int, path, opset: int, input_name: str,
                   output_name: str = FEATURES_NAME) -> None:
    """Raw `[N, C, H, W]` → the encoder's map (`Encoder`) or per-pixel features
    (`Embeddings`); batch and sides dynamic."""
    import warnings

    import onnx

    example = torch.zeros(1, channels, 4 * multiple, 4 * multiple)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (DeprecationWarning, UserWarning))
        torch.onnx.export(module.eval(), (example,), str(path), dynamo=False, opset_version=opset,
                          input_names=[input_name], output_names=[output_name],
                          dynamic_axes={input_name: {0: "N", 2: "H", 3: "W"}, output_name: {0: "N", 2: "h", 3: "w"}},
                          do_constant_folding=True)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def encoder_onnx_diff(path, module: nn.Module, x: np.ndarray, output_name: str = FEATURES_NAME) \
        -> tuple[float, str] | None:
    from .export import INPUT_NAME, ort_max_abs_diff

    x = np.ascontiguousarray(x, dtype=np.float32)
    with torch.no_grad():
        want = module.eval()(torch.from_numpy(x)).numpy()
    return ort_max_abs_diff(path, x, want, output=output_name)


def pretrain_command(args, emit, log, write_json, contracts) -> int:
    """`pretrain --arch simclr --views FILE|- --out DIR`: model.onnx (the encoder),
    model.pt (its checkpoint, which `train --encoder` loads), model.json, metrics.json."""
    import hashlib
    import sys
    import time
    from pathlib import Path

    from . import export
    from .publish import Graph, publish

    if args.contract not in contracts:
        raise InputError(f"contract version {args.contract} is not supported (supported: {contracts})")
    if not isinstance(args.hyperparameters, dict) or set(args.hyperparameters) - {"width", "depth"}:
        raise InputError("--hyperparameters: a JSON object with width and/or depth (the encoder's FG-UNet shape)")
    if args.threads < 1 or args.projection_dim < 1:
        raise InputError("--threads and --projection-dim must be ≥ 1")
    torch.set_num_threads(args.threads)
    stream = sys.stdin.buffer if args.views == "-" else open(args.views, "rb")
    digest = hashlib.sha256()

    class Hashing:
        """Hashes what is read, so the sidecar names the exact views it was trained on."""

        def readline(self):
            line = stream.readline()
            digest.update(line)
            return line

        def read(self, n):
            data = stream.read(n)
            digest.update(data)
            return data

    header, batches = read_views(Hashing())
    log(f"views: {header.epochs} epochs × {header.batches_per_epoch} batches of {header.batch_size} pairs, "
        f"{len(header.channels)} channels, {header.patch} px patches; pretraining {ARCH} (τ = {args.temperature})")
    emit({"event": "start", "arch": ARCH, "channels": len(header.channels), "patch": header.patch,
          "epochs": header.epochs, "seed": args.seed})
    last: list[np.ndarray] = []

    def keep_last(it):
        for epoch, first, second in it:
            last[:] = [first]
            yield epoch, first, second

    config = PretrainConfig(seed=args.seed, temperature=args.temperature, learning_rate=args.learning_rate,
                            momentum=args.momentum, projection_dim=args.projection_dim,
                            hyperparameters=args.hyperparameters)
    started = time.perf_counter()
    result = pretrain(header, keep_last(batches), config, emit)
    seconds = time.perf_counter() - started
    if stream is not sys.stdin.buffer:
        stream.close()
    if not result.history:
        raise InputError("the views stream held no batch")
    encoder = result.model.encoder
    c = len(header.channels)
    views_sha256 = digest.hexdigest()
    checkpoint = {"arch": ARCH, "channels": c, "hyperparameters": result.hyperparameters, "mean": header.mean,
                  "std": header.std, "views_sha256": views_sha256}
    # The per-pixel features the host writes as a raster, checked the same way.
    embeddings = Embeddings(encoder).eval()
    e = embeddings.channels
    embeddings_sidecar = {
        "contract": "sitsflow-model/1",
        "arch": "simclr-embeddings",
        "hyperparameters": result.hyperparameters,
        "input": {"name": export.INPUT_NAME, "dtype": "float32", "shape": ["N", c, "H", "W"], "layout": "N×C×H×W",
                  "channels": header.channels, "bands": header.bands, "dates": header.dates,
                  "multiple": encoder.multiple},
        "output": {"name": EMBEDDINGS_NAME, "dtype": "float32", "shape": ["N", e, "H", "W"], "classes": [],
                   "channels": [f"emb{k:02d}" for k in range(e)],
                   "kind": "per-pixel encoder features: the first level's map, then the bottom map upsampled "
                           "bilinearly"},
        "tiling": {"tile": 256, "overlap": 16, "blend": "centre crop"},
        "normalisation": {"mean": header.mean, "std": header.std, "in_graph": True},
        "opset": export.OPSET,
        "onnx_check": None,  # filled in by publish
    }
    metrics = {"arch": ARCH, "loss": "NT-Xent", "temperature": args.temperature, "history": result.history,
               "first_loss": result.history[0]["train_loss"], "last_loss": result.history[-1]["train_loss"],
               "views": result.views_seen, "seconds": round(seconds, 2),
               "waiting_for_views_seconds": round(result.waiting_seconds, 2)}
    f = encoder.out_channels
    sidecar = {
        "contract": "sitsflow-model/1",
        "arch": ARCH,
        "kind": "encoder",
        "hyperparameters": result.hyperparameters,
        "parameters": sum(p.numel() for p in encoder.parameters()),
        "input": {"name": export.INPUT_NAME, "dtype": "float32", "shape": ["N", c, "H", "W"], "layout": "N×C×H×W",
                  "channels": header.channels, "bands": header.bands, "dates": header.dates,
                  "missing": "NaN (replaced by the channel mean inside the graph)", "multiple": encoder.multiple},
        "output": {"name": FEATURES_NAME, "dtype": "float32", "shape": ["N", f, "H/%d" % encoder.multiple,
                                                                          "W/%d" % encoder.multiple],
                   "kind": "encoder feature map (FG-UNet's bottom)"},
        "normalisation": {"mean": header.mean, "std": header.std, "in_graph": True},
        "opset": export.OPSET,
        "views_sha256": views_sha256,
        "views": {"epochs": header.epochs, "batches_per_epoch": header.batches_per_epoch,
                  "batch_size": header.batch_size, "patch": header.patch, "source": header.source},
        "seed": args.seed,
        "threads": args.threads,
        "torch_version": torch.__version__,
        "training": {"loss": "NT-Xent (cosine similarity, temperature τ, mean over the 2N anchors)",
                     "temperature": args.temperature, "optimiser": "SGD", "learning_rate": args.learning_rate,
                     "momentum": args.momentum, "projection_head": f"Linear({f}, {f}) → ReLU → Linear({f}, "
                                                                   f"{args.projection_dim})",
                     "seconds": round(seconds, 2), "waiting_for_views_seconds": round(result.waiting_seconds, 2),
                     "first_loss": metrics["first_loss"],
                     "last_loss": metrics["last_loss"]},
        "onnx_check": None,  # filled in by publish
    }
    check_views = last[0][:8]  # a few views of the last batch
    out: Path = args.out
    publish(out, checkpoint=lambda path: save_encoder(path, encoder, checkpoint), graphs=[
        Graph("model.onnx", export=lambda path: export_encoder(encoder, encoder.multiple, c, path, export.OPSET,
                                                               export.INPUT_NAME),
              check=lambda path: encoder_onnx_diff(path, encoder, check_views),
              mismatch="the ONNX encoder differs from PyTorch by {diff:.2e} (onnxruntime {version})"),
        Graph("embeddings.onnx", export=lambda path: export_encoder(embeddings, encoder.multiple, c, path, export.OPSET,
                                                                    export.INPUT_NAME, EMBEDDINGS_NAME),
              check=lambda path: encoder_onnx_diff(path, embeddings, check_views, EMBEDDINGS_NAME),
              mismatch="the ONNX embeddings differ from PyTorch by {diff:.2e}",
              sidecar=("embeddings.json", embeddings_sidecar)),
    ], metrics=metrics, sidecar=sidecar, write_json=write_json)
    log(f"NT-Xent {metrics['first_loss']:.4f} → {metrics['last_loss']:.4f} over {len(result.history)} epochs "
        f"({seconds:.1f} s)")
    emit({"event": "done", "model": str((out / "model.onnx").resolve()), "first_loss": metrics["first_loss"],
          "last_loss": metrics["last_loss"]})
    return 0
