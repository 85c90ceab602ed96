"""A small Fashion-MNIST classifier whose features drive the *proxy* metrics.

FID and LPIPS need ImageNet networks (Inception, AlexNet) whose weights cannot be downloaded
here, and which see 32x32 grayscale clothing poorly anyway. This CNN, trained on all ten
classes, gives features that know what a sneaker is: its penultimate layer feeds proxy-FID
and proxy-KID, and three of its convolutional stages feed the LPIPS-style proxy distance.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from . import fmnist

DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "fmnist-classifier.safetensors"


class MetricNet(nn.Module):
    """Four 3x3 conv stages (32x32 -> 4x4) and two linear layers; about 0.4M parameters.

    BatchNorm makes a few epochs enough; in eval mode it is a fixed affine map, so features
    of a sample never depend on the rest of its batch.
    """

    def __init__(self, num_classes: int = 10, feature_dim: int = 128):
        super().__init__()
        self.stage1 = self._conv(1, 32)     # 32x32, edges and textures
        self.stage2 = self._conv(32, 32)    # 32x32 -> pooled to 16x16
        self.stage3 = self._conv(32, 64)    # 16x16 -> pooled to 8x8
        self.stage4 = self._conv(64, 128)   # 8x8 -> pooled to 4x4
        self.fc1 = nn.Linear(128 * 4 * 4, feature_dim)
        self.dropout = nn.Dropout(0.3)
        self.fc2 = nn.Linear(feature_dim, num_classes)

    @staticmethod
    def _conv(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())

    def forward_all(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every feature the metrics use, for x [B, 1, 32, 32] in [-1, 1]."""
        s1 = self.stage1(x)
        s2 = self.stage2(s1)
        s3 = self.stage3(F.max_pool2d(s2, 2))
        s4 = self.stage4(F.max_pool2d(s3, 2))
        pen = F.relu(self.fc1(F.max_pool2d(s4, 2).flatten(1)))
        return {"stage2": s2, "stage3": s3, "stage4": s4, "penultimate": pen,
                "logits": self.fc2(self.dropout(pen))}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_all(x)["logits"]


LPIPS_LAYERS = ("stage2", "stage3", "stage4")


def load_metric_net(path: str | Path | None = None) -> MetricNet:
    """The shipped classifier in eval mode, float32, without gradients."""
    path = Path(path) if path else DEFAULT_WEIGHTS
    if not path.exists():
        raise FileNotFoundError(f"metric classifier weights not found: {path} "
                                "(train them with `domainstudio train-classifier`)")
    net = MetricNet()
    net.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
    return net.eval().requires_grad_(False)


@torch.no_grad()
def accuracy(net: MetricNet, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    net.eval()
    correct = sum((net(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum().item()
                  for i in range(0, len(x), batch))
    return correct / len(x)


def _epoch(net, opt, sched, x, y, gen, batch_size: int) -> float:
    """One pass over the shuffled train split, with random horizontal flips (clothes are symmetric)."""
    net.train()
    order = torch.randperm(len(x), generator=gen)
    total = 0.0
    for i in range(0, len(x), batch_size):
        idx = order[i:i + batch_size]
        xb = x[idx]
        flip = torch.rand(len(idx), generator=gen) < 0.5
        xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
        loss = F.cross_entropy(net(xb), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        total += loss.item() * len(idx)
    return total / len(x)


def train_classifier(epochs: int = 4, seed: int = 0, batch_size: int = 128, lr: float = 2e-3,
                     out: str | Path | None = None) -> dict:
    """Train on the train split (all ten classes), report test accuracy, save fp16 safetensors + JSON."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    images, labels = fmnist.load_split("train")
    x, y = fmnist.to_tensor(images), torch.from_numpy(labels)
    test_images, test_labels = fmnist.load_split("t10k")
    xt, yt = fmnist.to_tensor(test_images), torch.from_numpy(test_labels)
    net = MetricNet()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * -(-len(x) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    t0 = time.time()
    for epoch in range(epochs):
        loss = _epoch(net, opt, sched, x, y, gen, batch_size)
        print(f"epoch {epoch + 1}/{epochs} loss {loss:.4f} test accuracy {accuracy(net, xt, yt):.4f} "
              f"({time.time() - t0:.0f}s)", flush=True)
    report = {"test_accuracy": accuracy(net, xt, yt), "epochs": epochs, "batch_size": batch_size,
              "lr": lr, "schedule": "one-cycle AdamW, wd 1e-4, random h-flip", "seed": seed,
              "train_seconds": round(time.time() - t0), "threads": torch.get_num_threads()}
    _save(net, Path(out) if out else DEFAULT_WEIGHTS, report)
    return report


def _save(net: MetricNet, out: Path, report: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: (v.half() if v.dtype.is_floating_point else v).contiguous()
               for k, v in net.state_dict().items()}
    save_file(tensors, str(out), metadata={"model": "fmnist-classifier"})
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"saved {out} ({out.stat().st_size / 1e6:.2f} MB), test accuracy {report['test_accuracy']:.4f}")


# A sample the classifier gives less than this probability is "unsure": 6% of real test images
# are (benchmarks/results/fmnist-source.md), so a higher share in samples means malformed ones.
UNSURE_BELOW = 0.6


@torch.no_grad()
def classify(net: MetricNet, x: torch.Tensor, batch: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted class [N], its probability [N]) of images [N, 1, 32, 32] in [-1, 1]."""
    probs = torch.cat([net(x[i:i + batch]).softmax(-1) for i in range(0, len(x), batch)])
    confidence, label = probs.max(-1)
    return label, confidence
