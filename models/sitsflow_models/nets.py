"""The temporal classifiers: input `[N, T, B]` raw reflectance (NaN = missing), output
softmax probabilities `[N, C]`.

Normalisation and NaN handling are part of the module (buffers, not Python-side
preprocessing), so they are inside the exported ONNX graph and the host feeds raw
values. `forward` returns logits for training; `Classifier.probabilities` is what is
exported.
"""

from __future__ import annotations

import datetime
import math

import torch
from torch import nn

ARCHS = ("tempcnn", "lstm", "ltae")


class Normalise(nn.Module):
    """Per-band standardisation, then NaN → 0 (the band mean: a missing value carries no
    information either way). Statistics come from the training set."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean.reshape(1, 1, -1).float())
        self.register_buffer("std", std.reshape(1, 1, -1).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x - self.mean) / self.std
        return torch.where(torch.isnan(z), torch.zeros_like(z), z)


class TempCNN(nn.Module):
    """Pelletier, Webb & Petitjean (2019): 3 × (conv1d, batch norm, ReLU, dropout), flatten,
    dense + batch norm + ReLU + dropout, linear to the classes."""

    def __init__(self, bands: int, dates: int, classes: int, filters: int = 64, kernel: int = 5,
                 dense: int = 256, dropout: float = 0.2):
        super().__init__()
        blocks = []
        channels = bands
        for _ in range(3):
            # "same" padding keeps T, as in the paper, so the dense layer sees T × filters.
            blocks += [nn.Conv1d(channels, filters, kernel, padding=kernel // 2), nn.BatchNorm1d(filters),
                       nn.ReLU(), nn.Dropout(dropout)]
            channels = filters
        self.convs = nn.Sequential(*blocks)
        self.dense = nn.Sequential(nn.Flatten(), nn.Linear(filters * dates, dense), nn.BatchNorm1d(dense),
                                   nn.ReLU(), nn.Dropout(dropout))
        self.head = nn.Linear(dense, classes)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        # [N, T, B] → [N, B, T]: conv1d slides over time with bands as channels.
        return self.head(self.dense(self.convs(z.transpose(1, 2))))


class _FoldedConv(nn.Module):
    """Inference form of one TempCNN block (conv1d with "same" padding, batch norm in eval
    mode, ReLU), channel-last: the batch norm is folded into the weights, and the k
    windows of every (pixel, date) are gathered into rows of one GEMM with the ReLU fused
    (`[N·T, k·C] × [k·C, F]`). ONNX Runtime's CPU convolution runs each pixel's short
    series as its own tiny product; this form ran the demo TempCNN 2.7× faster there."""

    def __init__(self, conv: nn.Conv1d, bn: nn.BatchNorm1d, dates: int):
        super().__init__()
        scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
        w = conv.weight.detach() * scale[:, None, None]  # [F, C, k]
        bias = (conv.bias.detach() - bn.running_mean) * scale + bn.bias.detach()
        f, c, k = w.shape
        self.k, self.dates, self.c, self.f = k, dates, c, f
        self.register_buffer("weight", w.permute(0, 2, 1).reshape(f, k * c).contiguous())  # [F, k·C]
        self.register_buffer("bias", bias)
        # Row t of the padded series' windows: dates t … t + k − 1.
        self.register_buffer("windows", (torch.arange(dates)[:, None] + torch.arange(k)[None, :]).reshape(-1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # [N, T, C] → [N, T, F]
        padded = nn.functional.pad(z, (0, 0, self.k // 2, self.k // 2))
        rows = padded.index_select(1, self.windows).reshape(-1, self.k * self.c)
        return torch.relu(nn.functional.linear(rows, self.weight, self.bias)).reshape(-1, self.dates, self.f)


class TempCNNForInference(nn.Module):
    """A trained `TempCNN` rewritten for inference (what is exported to ONNX): the same
    function up to float rounding (dropout is off in eval mode; batch norms are folded;
    the dense layer's columns are reordered for the channel-last layout)."""

    def __init__(self, net: TempCNN, dates: int):
        super().__init__()
        blocks = list(net.convs)
        self.convs = nn.Sequential(*[_FoldedConv(blocks[i], blocks[i + 1], dates) for i in range(0, len(blocks), 4)])
        linear, bn = net.dense[1], net.dense[2]
        scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
        d, columns = linear.weight.shape
        f = columns // dates
        # TempCNN flattens [F, T] (filter-major); the channel-last output flattens [T, F].
        w = linear.weight.detach().reshape(d, f, dates).permute(0, 2, 1).reshape(d, columns) * scale[:, None]
        self.dense = nn.Linear(columns, d)
        with torch.no_grad():
            self.dense.weight.copy_(w)
            self.dense.bias.copy_((linear.bias.detach() - bn.running_mean) * scale + bn.bias.detach())
        self.head = net.head

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.dense(self.convs(z).flatten(1))))


def for_inference(classifier: "Classifier", dates: int) -> "Classifier":
    """The classifier as it is exported: TempCNN in its folded, channel-last form; other
    networks as they are. Eval mode."""
    classifier = classifier.eval()
    if not isinstance(classifier.net, TempCNN):
        return classifier
    folded = Classifier(TempCNNForInference(classifier.net, dates), torch.zeros(1), torch.ones(1))
    folded.normalise = classifier.normalise
    return folded.eval()


class LSTMClassifier(nn.Module):
    """Per-pixel LSTM (seed 001): stacked LSTM over the dates, hidden states mean-pooled
    over time (every date contributes, not only the last one, which may be cloudy),
    dropout, linear to the classes."""

    def __init__(self, bands: int, dates: int, classes: int, hidden: int = 128, layers: int = 2,
                 dropout: float = 0.2):
        super().__init__()
        self.lstm = nn.LSTM(bands, hidden, num_layers=layers, batch_first=True,
                            dropout=dropout if layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, classes)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        states, _ = self.lstm(z)
        return self.head(self.dropout(states.mean(dim=1)))


def day_positions(dates: list[str] | None, count: int) -> list[float]:
    """The dates as days since the first one (`YYYY-MM-DD` names), else their indices
    (`t000`… names or none): the positions L-TAE encodes. Days since the first date, not
    day of year, so that a model trained on one year's anchored grid reads the next
    year's grid at the same positions."""
    if dates is not None and len(dates) == count:
        try:
            days = [datetime.date.fromisoformat(d) for d in dates]
        except ValueError:
            days = None
        if days is not None:
            return [float((d - days[0]).days) for d in days]
    return [float(t) for t in range(count)]


def sinusoid_table(positions: torch.Tensor, channels: int, period: float) -> torch.Tensor:
    """Transformer position encoding `[T, channels]`: sin / cos of position / period^(2i/channels)."""
    i = torch.arange(channels, dtype=torch.float64)
    angles = positions.double()[:, None] / torch.pow(torch.tensor(float(period), dtype=torch.float64),
                                                      2 * torch.div(i, 2, rounding_mode="floor") / channels)
    return torch.where(i.remainder(2) == 0, torch.sin(angles), torch.cos(angles)).float()


class LTAE(nn.Module):
    """Lightweight Temporal Attention Encoder (Garnot & Landrieu, 2020) for pixel series,
    in the form sits' `sits_lighttae` gives it: a per-date MLP embeds the bands (32, 64,
    128), a 1×1 projection to `d_model` plus the sinusoidal encoding of each date's day
    (period 1000), then `heads` attention heads, each with one learnt master query and
    keys from a linear map of the sequence, pool the dates; each head attends over its own
    `d_model / heads` channels of the values and the heads are concatenated. An MLP (with
    batch norm) and a decoder (64, 32) give the class logits.

    Dates with every band missing (cloud-masked) get no attention: their logits are
    pushed to −1e9 before the softmax (a series with no valid date attends uniformly).
    Partly missing values are the band mean, as for the other networks."""

    masks_missing = True

    def __init__(self, bands: int, dates: int, classes: int, d_model: int = 128, heads: int = 16, d_k: int = 8,
                 dropout: float = 0.2, period: float = 1000.0, positions: list[float] | None = None):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model {d_model} is not a multiple of heads {heads}")
        self.heads, self.d_k, self.d_model = heads, d_k, d_model
        embedding, channels = [], bands
        for width in (32, 64, 128):
            embedding += [nn.Linear(channels, width), nn.LayerNorm(width), nn.ReLU()]
            channels = width
        self.embed = nn.Sequential(*embedding)
        self.project = nn.Sequential(nn.Linear(channels, d_model), nn.LayerNorm(d_model))
        days = torch.tensor(positions if positions is not None else [float(t) for t in range(dates)])
        if days.numel() != dates:
            raise ValueError(f"{days.numel()} positions for {dates} dates")
        self.register_buffer("positions", days.float())
        # Each head gets the same table over its own channels (the paper's choice).
        self.register_buffer("encoding", sinusoid_table(days, d_model // heads, period).repeat(1, heads))
        self.query = nn.Parameter(torch.randn(heads, d_k) * math.sqrt(2.0 / d_k))
        self.keys = nn.Linear(d_model, heads * d_k)
        nn.init.normal_(self.keys.weight, mean=0.0, std=math.sqrt(2.0 / d_k))
        self.attention_dropout = nn.Dropout(0.1)
        self.mlp = nn.Sequential(nn.Linear(d_model, d_model), nn.BatchNorm1d(d_model), nn.ReLU())
        self.dropout = nn.Dropout(dropout)
        self.out_norm = nn.LayerNorm(d_model)
        self.decoder = nn.Sequential(nn.Linear(d_model, 64), nn.BatchNorm1d(64), nn.ReLU(),
                                     nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, classes))

    def attention(self, z: torch.Tensor, missing: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The pooled `[N, d_model]` series and the attention weights `[N, heads, T]`."""
        n, t, _ = z.shape
        e = self.project(self.embed(z)) + self.encoding[None]
        k = self.keys(e).reshape(n, t, self.heads, self.d_k)
        logits = torch.einsum("nthk,hk->nht", k, self.query) / math.sqrt(self.d_k)
        if missing is not None:
            logits = torch.where(missing[:, None, :], torch.full_like(logits, -1e9), logits)
        weights = torch.softmax(logits, dim=-1)
        v = e.reshape(n, t, self.heads, self.d_model // self.heads)
        pooled = torch.einsum("nht,nthc->nhc", self.attention_dropout(weights), v).reshape(n, self.d_model)
        return pooled, weights

    def forward(self, z: torch.Tensor, missing: torch.Tensor | None = None) -> torch.Tensor:
        pooled, _ = self.attention(z, missing)
        return self.decoder(self.out_norm(self.dropout(self.mlp(pooled))))


class Classifier(nn.Module):
    """Normalisation + network. `forward` gives logits, `probabilities` the softmax.
    Networks with `masks_missing` also get which dates have every band missing."""

    def __init__(self, net: nn.Module, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.normalise = Normalise(mean, std)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if getattr(self.net, "masks_missing", False):
            # A sum, not `all`: ReduceSum exports to every opset.
            missing = torch.isnan(x).float().sum(-1) >= x.shape[-1]
            return self.net(self.normalise(x), missing)
        return self.net(self.normalise(x))

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.forward(x), dim=1)


class Probabilities(nn.Module):
    """What the ONNX graph computes: raw `[N, T, B]` → softmax `[N, C]`."""

    def __init__(self, classifier: Classifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier.probabilities(x)


def default_hyperparameters(arch: str) -> dict:
    if arch == "tempcnn":
        return {"filters": 64, "kernel": 5, "dense": 256, "dropout": 0.2}
    if arch == "lstm":
        return {"hidden": 128, "layers": 2, "dropout": 0.2}
    if arch == "ltae":
        return {"d_model": 128, "heads": 16, "d_k": 8, "dropout": 0.2, "period": 1000.0}
    raise ValueError(f"unknown architecture `{arch}` (expected one of {', '.join(ARCHS)})")


def build(arch: str, bands: int, dates: int, classes: int, mean, std, hyperparameters: dict | None = None,
          positions: list[float] | None = None) -> Classifier:
    """The classifier of a configuration; `model.pt` stores exactly these arguments.
    `positions` (L-TAE): each date's day (`day_positions`); the state dict carries them
    too, so a checkpoint restores the trained ones."""
    hp = default_hyperparameters(arch)
    if hyperparameters:
        unknown = set(hyperparameters) - set(hp)
        if unknown:
            raise ValueError(f"unknown {arch} hyperparameter(s) {', '.join(sorted(unknown))}")
        hp.update(hyperparameters)
    if arch == "tempcnn":
        net = TempCNN(bands, dates, classes, **hp)
    elif arch == "ltae":
        net = LTAE(bands, dates, classes, positions=positions, **hp)
    else:
        net = LSTMClassifier(bands, dates, classes, **hp)
    return Classifier(net, torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32))
