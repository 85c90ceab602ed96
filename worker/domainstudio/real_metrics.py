"""The real FID and LPIPS, on ImageNet networks loaded from local files only.

Nothing here downloads. Give the files as arguments or through the environment:

* FID: Inception-v3 as pytorch-fid ships it (TF-ported FID weights,
  ``pt_inception-2015-12-05-6726825d.pth``) -- ``DOMAINSTUDIO_FID_INCEPTION_WEIGHTS``.
* LPIPS: torchvision's AlexNet (``alexnet-owt-7be5be79.pth``) --
  ``DOMAINSTUDIO_LPIPS_ALEXNET_WEIGHTS`` -- and the ``lpips`` package's linear layers
  for it (``lpips/weights/v0.1/alex.pth``) -- ``DOMAINSTUDIO_LPIPS_LINEAR_WEIGHTS``.

Both networks are written out here in plain torch with the key names of those files, so
neither torchvision nor the lpips package is needed. Images are [N, C, H, W] in [-1, 1];
grayscale is repeated to three channels.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .metrics import _unit_channels, fid_from_features, intra_cluster_distance, lpips_distance_matrix

FID_WEIGHTS_ENV = "DOMAINSTUDIO_FID_INCEPTION_WEIGHTS"
ALEXNET_WEIGHTS_ENV = "DOMAINSTUDIO_LPIPS_ALEXNET_WEIGHTS"
LPIPS_LINEAR_ENV = "DOMAINSTUDIO_LPIPS_LINEAR_WEIGHTS"


def _weights_file(path, env: str, expected_name: str, purpose: str) -> Path:
    """Resolve a weights file or fail with a message naming the file and how to give it."""
    path = path or os.environ.get(env)
    if not path or not Path(path).is_file():
        where = f"{path} does not exist" if path else "no file given"
        raise FileNotFoundError(
            f"{purpose} needs the weights file {expected_name} ({where}); put it on this "
            f"machine and pass its path or set {env}. Nothing is downloaded automatically."
        )
    return Path(path)


def _load_strict(module: nn.Module, path: Path, ignore_prefixes: tuple[str, ...] = ()) -> None:
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith(ignore_prefixes)}
    missing, unexpected = module.load_state_dict(state, strict=False)
    # Files saved before torch 0.4.1 have no BatchNorm step counters; inference never uses them.
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"{path} does not match the expected layout: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")


def _rgb(x: torch.Tensor) -> torch.Tensor:
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


# ---------------------------------------------------------------- Inception-v3 (FID variant)

class _Conv(nn.Module):
    """torchvision's BasicConv2d: conv without bias, BatchNorm (eps 1e-3), ReLU."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


# The TF graph averages only over real pixels at borders, unlike torchvision's default.
_avg3 = partial(F.avg_pool2d, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class _BlockA(nn.Module):
    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = _Conv(cin, 64, 1)
        self.branch5x5_1, self.branch5x5_2 = _Conv(cin, 48, 1), _Conv(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _Conv(cin, 64, 1)
        self.branch3x3dbl_2, self.branch3x3dbl_3 = _Conv(64, 96, 3, padding=1), _Conv(96, 96, 3, padding=1)
        self.branch_pool = _Conv(cin, pool_features, 1)

    def forward(self, x):
        return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          self.branch_pool(_avg3(x))], 1)


class _BlockB(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = _Conv(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = _Conv(cin, 64, 1)
        self.branch3x3dbl_2, self.branch3x3dbl_3 = _Conv(64, 96, 3, padding=1), _Conv(96, 96, 3, stride=2)

    def forward(self, x):
        return torch.cat([self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          F.max_pool2d(x, 3, 2)], 1)


class _BlockC(nn.Module):
    def __init__(self, cin: int, c7: int):
        super().__init__()
        row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
        self.branch1x1 = _Conv(cin, 192, 1)
        self.branch7x7_1, self.branch7x7_2, self.branch7x7_3 = _Conv(cin, c7, 1), _Conv(c7, c7, **row), _Conv(c7, 192, **col)
        self.branch7x7dbl_1, self.branch7x7dbl_2 = _Conv(cin, c7, 1), _Conv(c7, c7, **col)
        self.branch7x7dbl_3, self.branch7x7dbl_4 = _Conv(c7, c7, **row), _Conv(c7, c7, **col)
        self.branch7x7dbl_5 = _Conv(c7, 192, **row)
        self.branch_pool = _Conv(cin, 192, 1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for conv in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            d = conv(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg3(x))], 1)


class _BlockD(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1, self.branch3x3_2 = _Conv(cin, 192, 1), _Conv(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _Conv(cin, 192, 1)
        self.branch7x7x3_2 = _Conv(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _Conv(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _Conv(192, 192, 3, stride=2)

    def forward(self, x):
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, 2)], 1)


class _BlockE(nn.Module):
    """FID's Mixed_7b (average pool branch) and Mixed_7c (max pool branch, a TF quirk)."""

    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = _Conv(cin, 320, 1)
        self.branch3x3_1 = _Conv(cin, 384, 1)
        self.branch3x3_2a, self.branch3x3_2b = _Conv(384, 384, (1, 3), padding=(0, 1)), _Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1, self.branch3x3dbl_2 = _Conv(cin, 448, 1), _Conv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a, self.branch3x3dbl_3b = _Conv(384, 384, (1, 3), padding=(0, 1)), _Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _Conv(cin, 192, 1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, 1, 1) if self.max_pool else _avg3(x)
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(b3), self.branch3x3_2b(b3),
                          self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d), self.branch_pool(pooled)], 1)


class FIDInception(nn.Module):
    """Inception-v3 up to the 2048-d pool features, in pytorch-fid's FID layout."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3, self.Conv2d_2a_3x3 = _Conv(3, 32, 3, stride=2), _Conv(32, 32, 3)
        self.Conv2d_2b_3x3 = _Conv(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1, self.Conv2d_4a_3x3 = _Conv(64, 80, 1), _Conv(80, 192, 3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = _BlockA(192, 32), _BlockA(256, 64), _BlockA(288, 64)
        self.Mixed_6a = _BlockB(288)
        self.Mixed_6b, self.Mixed_6c = _BlockC(768, 128), _BlockC(768, 160)
        self.Mixed_6d, self.Mixed_6e = _BlockC(768, 160), _BlockC(768, 192)
        self.Mixed_7a = _BlockD(768)
        self.Mixed_7b, self.Mixed_7c = _BlockE(1280, max_pool=False), _BlockE(2048, max_pool=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x in [-1, 1] (what pytorch-fid feeds after its normalisation), resized to 299."""
        x = F.interpolate(_rgb(x), size=(299, 299), mode="bilinear", align_corners=False)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(F.max_pool2d(x, 3, 2)))
        x = F.max_pool2d(x, 3, 2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


def load_fid_inception(path: str | Path | None = None) -> FIDInception:
    path = _weights_file(path, FID_WEIGHTS_ENV, "pt_inception-2015-12-05-6726825d.pth (pytorch-fid)", "FID")
    net = FIDInception()
    _load_strict(net, path, ignore_prefixes=("fc.", "AuxLogits."))  # classifier head is unused
    return net.eval().requires_grad_(False)


@torch.no_grad()
def inception_features(net: FIDInception, images: torch.Tensor, batch_size: int = 50) -> torch.Tensor:
    return torch.cat([net(images[i:i + batch_size].float()) for i in range(0, len(images), batch_size)])


def fid(images: torch.Tensor, reference: torch.Tensor, weights: str | Path | None = None) -> float:
    """FID between two image sets (the real one; at least 2,048 images per set for a stable value)."""
    net = load_fid_inception(weights)
    return fid_from_features(inception_features(net, images), inception_features(net, reference))


# ---------------------------------------------------------------- LPIPS (AlexNet, lin layers v0.1)

class AlexLPIPS(nn.Module):
    """LPIPS-Alex: torchvision AlexNet's five ReLU outputs, unit-normalised over channels,
    squared differences weighted by the learned 1x1 layers, spatial mean, summed over layers."""

    CHANNELS = (64, 192, 384, 256, 256)
    # lpips' ScalingLayer: maps [-1, 1] inputs to ImageNet-normalised ones.
    SHIFT = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    SCALE = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def __init__(self, resize_to: int | None = 64):
        super().__init__()
        self.resize_to = resize_to  # AlexNet's stride 4 leaves almost nothing of a 32x32 image
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU())
        for i, c in enumerate(self.CHANNELS):  # lpips names them lin{i}.model.1 (after a Dropout)
            self.add_module(f"lin{i}", nn.Module())
            getattr(self, f"lin{i}").model = nn.Sequential(nn.Dropout(), nn.Conv2d(c, 1, 1, bias=False))

    def _relus(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = (_rgb(x) - self.SHIFT) / self.SCALE
        if self.resize_to:
            x = F.interpolate(x, size=(self.resize_to, self.resize_to), mode="bilinear", align_corners=False)
        outs = []
        for layer in self.features:
            x = layer(x)
            if isinstance(layer, nn.ReLU):
                outs.append(x)
        return outs

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Distance per pair of images, [N]."""
        total = 0
        for i, (fa, fb) in enumerate(zip(self._relus(a), self._relus(b))):
            diff = (_unit_channels(fa) - _unit_channels(fb)) ** 2
            total = total + getattr(self, f"lin{i}").model(diff).mean((2, 3)).flatten()
        return total


def load_lpips_alex(alexnet_weights: str | Path | None = None, linear_weights: str | Path | None = None,
                    resize_to: int | None = 64) -> AlexLPIPS:
    alex = _weights_file(alexnet_weights, ALEXNET_WEIGHTS_ENV, "alexnet-owt-7be5be79.pth (torchvision AlexNet)", "LPIPS")
    lin = _weights_file(linear_weights, LPIPS_LINEAR_ENV, "alex.pth (lpips package, weights/v0.1)", "LPIPS")
    net = AlexLPIPS(resize_to)
    features = {k[len("features."):]: v for k, v in torch.load(alex, map_location="cpu", weights_only=True).items()
                if k.startswith("features.")}
    net.features.load_state_dict(features)
    lin_state = torch.load(lin, map_location="cpu", weights_only=True)
    net.load_state_dict({**net.state_dict(), **lin_state}, strict=True)
    if set(lin_state) != {f"lin{i}.model.1.weight" for i in range(5)}:
        raise ValueError(f"{lin} is not the lpips AlexNet linear-layer file: keys {sorted(lin_state)[:5]}")
    return net.eval().requires_grad_(False)


@torch.no_grad()
def lpips_matrix(net: AlexLPIPS, a: torch.Tensor, b: torch.Tensor, batch_size: int = 100) -> torch.Tensor:
    """[Na, Nb] LPIPS distances; each image goes through AlexNet once, not once per pair."""
    def relus(x):
        parts = [net._relus(x[i:i + batch_size].float()) for i in range(0, len(x), batch_size)]
        return [torch.cat(layer) for layer in zip(*parts)]
    weights = [getattr(net, f"lin{i}").model[1].weight.flatten() for i in range(len(net.CHANNELS))]
    return lpips_distance_matrix(relus(a), relus(b), weights)


def intra_lpips(samples: torch.Tensor, shots: torch.Tensor, net: AlexLPIPS | None = None) -> dict:
    """The paper's Intra-LPIPS with the real LPIPS-Alex (see ``metrics.intra_cluster_distance``)."""
    net = net or load_lpips_alex()
    return intra_cluster_distance(lpips_matrix(net, samples, shots), lpips_matrix(net, samples, samples))
