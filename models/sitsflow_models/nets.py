"""The temporal classifiers: input `[N, T, B]` raw reflectance (NaN = missing), output
softmax probabilities `[N, C]`.

Normalisation and NaN handling are part of the module (buffers, not Python-side
preprocessing), so they are inside the exported ONNX graph and the host feeds raw
values. `forward` returns logits for training; `Classifier.probabilities` is what is
exported.
"""

from __future__ import annotations

import torch
from torch import nn

ARCHS = ("tempcnn", "lstm")


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


class Classifier(nn.Module):
    """Normalisation + network. `forward` gives logits, `probabilities` the softmax."""

    def __init__(self, net: nn.Module, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.normalise = Normalise(mean, std)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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
    raise ValueError(f"unknown architecture `{arch}` (expected one of {', '.join(ARCHS)})")


def build(arch: str, bands: int, dates: int, classes: int, mean, std, hyperparameters: dict | None = None) -> Classifier:
    """The classifier of a configuration; `model.pt` stores exactly these arguments."""
    hp = default_hyperparameters(arch)
    if hyperparameters:
        unknown = set(hyperparameters) - set(hp)
        if unknown:
            raise ValueError(f"unknown {arch} hyperparameter(s) {', '.join(sorted(unknown))}")
        hp.update(hyperparameters)
    if arch == "tempcnn":
        net = TempCNN(bands, dates, classes, **hp)
    else:
        net = LSTMClassifier(bands, dates, classes, **hp)
    return Classifier(net, torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32))
