"""The networks of the corpus, written the way their users write them."""
from __future__ import annotations

from typing import Optional, Sequence, Type

import torch
import torch.nn.functional as F
from torch import nn


class MnistNet(nn.Module):
    """pytorch/examples' mnist/main.py ``Net``, as it is there: functional ReLUs, log_softmax out."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, 28, 28) -> (B, 10) log-probabilities
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = self.dropout2(x)
        return F.log_softmax(self.fc2(x), dim=1)


def mlp(sizes: Sequence[int], activation: Type[nn.Module] = nn.ReLU, out: Optional[nn.Module] = None,
        flatten: bool = True) -> nn.Sequential:
    """Linear layers of ``sizes`` with ``activation`` between them, and ``out`` after the last."""
    layers: list = [nn.Flatten()] if flatten else []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(activation())
    if out is not None:
        layers.append(out)
    return nn.Sequential(*layers)


class TinyTransformer(nn.Module):
    """A token classifier: embedding + learned positions, a 2-layer pre-norm encoder, mean pool."""

    def __init__(self, vocab: int = 24, length: int = 16, d: int = 32, classes: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.zeros(1, length, d))
        layer = nn.TransformerEncoderLayer(d, nhead=2, dim_feedforward=64, dropout=0.1, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, classes) logits
        h = self.encoder(self.embed(tokens) + self.pos[:, :tokens.shape[1]])
        return self.head(self.norm(h).mean(1))


class GRUClassifier(nn.Module):
    """Embedding, a one-layer GRU, the last hidden state into a linear head."""

    def __init__(self, vocab: int = 24, d: int = 32, classes: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.gru = nn.GRU(d, d, batch_first=True)
        self.head = nn.Linear(d, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, classes) logits
        _, h = self.gru(self.embed(tokens))  # h: (1, B, d)
        return self.head(h[0])


class Block(nn.Module):
    """A ResNet basic block: two 3x3 convs with BatchNorm, a projection when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.short(x))


class SmallResNet(nn.Module):
    """A ResNet for 28x28 digits: stem, three blocks (16, 32, 32 channels), pooled linear head."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True))
        self.layers = nn.Sequential(Block(16, 16), Block(16, 32, 2), Block(32, 32, 2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, 28, 28) -> (B, classes) logits
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


class MySigmoid(nn.Module):
    """A user's own sigmoid (not torch's nn.Sigmoid, written through tanh so that it cannot
    overflow): saturates all the same."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * (torch.tanh(0.5 * x) + 1)


class Scaled(nn.Module):
    """A linear layer whose weights are ``scale`` times larger, the output divided back: the same
    function as the plain layer, learned ``scale`` times slower relative to its weights under Adam."""

    def __init__(self, a: int, b: int, scale: float) -> None:
        super().__init__()
        self.scale = scale
        self.linear = nn.Linear(a, b)
        with torch.no_grad():
            self.linear.weight.mul_(scale)
            self.linear.bias.mul_(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) / self.scale
