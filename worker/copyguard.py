"""Copy guard: how far each generated image is from its nearest training photo.

A few-shot adapted model can memorise its 10-100 training photos; a gallery image that is
(nearly) one of them is no new image, and publishing it may publish the original photo.
Every image gets the cosine distance between its feature vector and the nearest training
photo's (features unit-normalised, so the distance is 1 - cos, in [0, 2]); an image under
the threshold is a *near copy*. The same features give the gallery's diversity.

Which feature network measures it (its name is stored with the gallery and shown):

* ``builtin:fmnist-ddpm-32`` and ``builtin:fmnist-sd-32`` (the demo models): the shipped Fashion-MNIST classifier's
  last conv stage (4x4x128, flattened), on images converted to 32x32 grayscale as the model sees them;
* a local CLIP or DINO folder in transformers format (``DOMAINSTUDIO_COPY_GUARD_MODEL``),
  loaded offline, for every model;
* otherwise a pixel descriptor: the 32x32 colour thumbnail, mean-centred and unit-normed
  (1 - the images' correlation). Honest but crude: it catches pixel copies, not a copy
  moved or re-lit.

Torch-side only: the web app reads the stored numbers and never imports this module.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from worker.domainstudio.errors import DomainStudioError

FMNIST_MODELS = ("builtin:fmnist-ddpm-32", "builtin:fmnist-sd-32")  # both draw Fashion-MNIST
SIDE = 32  # the demo model's resolution, and the pixel descriptor's

# Default thresholds (cosine distance), calibrated on Fashion-MNIST's test split (10 classes
# x 50 images, padded to 32x32 as the demo model sees them): each image against a light
# variant of itself (brightness x0.9-1.1, Gaussian noise sd 3/255, JPEG quality 90) versus
# against the nearest *other* image of its own class among the 50 (the realistic case: a
# photo set is 10-100 photos of one product class).
#   classifier (last conv stage): variant of itself p50 0.012  p95 0.027  p99 0.041
#                                 nearest other     p1  0.078  p5  0.101  p50 0.231
#   pixels:                       variant of itself p50 0.001  p95 0.003  p99 0.005
#                                 nearest other     p1  0.033  p5  0.039  p50 0.113
# Each threshold sits between the two: every light variant is flagged and under 1% of
# genuinely different images of the class. (The penultimate layer was tried first: it
# puts same-class images closer than light variants, p5 0.006 vs p95 0.009, so it cannot
# tell a copy from a sibling.) A copy shifted by a pixel or more is not reliably caught by
# either (median distance 0.15): the guard flags copies, not close compositions.
CLASSIFIER_THRESHOLD = 0.06
PIXEL_THRESHOLD = 0.02
# CLIP / DINO weights cannot be downloaded here, so these are not calibrated in this
# repository: they follow common near-duplicate practice (CLIP image embeddings: cosine
# similarity >= 0.95; DINO's CLS token spreads more). Set DOMAINSTUDIO_NEAR_COPY_THRESHOLD
# after looking at a few galleries.
PRETRAINED_THRESHOLDS = {"clip": 0.05, "dino": 0.10}


class CopyGuardError(DomainStudioError):
    """The configured feature network could not be loaded (a user-fixable setting). A core
    error, so that the gallery task fails the gallery with its message as it does for the
    core's own."""


def unit(features: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit length (a zero row stays zero)."""
    f = features.double().flatten(1)
    return f / f.norm(dim=1, keepdim=True).clamp_min(1e-12)


def cosine_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[Na, Nb] 1 - cos between unit rows of a and b; float64 keeps identical images at ~0."""
    return (1.0 - unit(a) @ unit(b).T).clamp_min(0.0)


def mean_pairwise_distance(features: torch.Tensor) -> float | None:
    """Mean cosine distance over all pairs i < j; None with fewer than two images."""
    n = len(features)
    if n < 2:
        return None
    d = cosine_distances(features, features)
    iu = torch.triu_indices(n, n, offset=1)
    return float(d[iu[0], iu[1]].mean())


# ------------------------------------------------------------------------- feature networks
class FeatureNetwork:
    """Maps PIL images to feature rows [N, D]. ``name`` is what the UI shows."""

    name: str
    kind: str
    default_threshold: float

    def features(self, images: Sequence[Image.Image]) -> torch.Tensor:
        raise NotImplementedError


def _square(image: Image.Image, mode: str) -> Image.Image:
    """The model's view of a photo: transparent areas on white, centre square, 32x32."""
    from worker.domainstudio.data import square_resize

    if image.mode in ("RGBA", "LA", "P"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return square_resize(image.convert(mode), SIDE)


def model_view(images: Sequence[Image.Image]) -> torch.Tensor:
    """[N, 1, 32, 32] in [-1, 1]: images as the demo model (and its classifier) see them."""
    arrays = [np.asarray(_square(im, "L"), dtype=np.float32) / 127.5 - 1.0 for im in images]
    return torch.from_numpy(np.stack(arrays))[:, None]


class ClassifierFeatures(FeatureNetwork):
    name = "Fashion-MNIST classifier (last conv stage, 32x32 grayscale)"
    kind = "fmnist-classifier"
    default_threshold = CLASSIFIER_THRESHOLD

    def __init__(self):
        from worker.domainstudio.metric_net import load_metric_net

        self.net = load_metric_net()

    @torch.no_grad()
    def features(self, images):
        """The last conv stage [128, 4, 4], flattened: specific to the image, where the
        penultimate layer only knows its class."""
        return torch.cat([self.net.forward_all(model_view(images[i:i + 256]))["stage4"].flatten(1)
                          for i in range(0, len(images), 256)]) if images else torch.zeros(0, 2048)


class PixelFeatures(FeatureNetwork):
    name = "pixel descriptor (32x32 colour thumbnail; no feature network configured)"
    kind = "pixels"
    default_threshold = PIXEL_THRESHOLD

    def features(self, images):
        if not images:
            return torch.zeros(0, SIDE * SIDE * 3)
        x = torch.from_numpy(np.stack([np.asarray(_square(im, "RGB"), dtype=np.float64) / 255.0 for im in images]))
        x = x.flatten(1)
        return x - x.mean(1, keepdim=True)  # brightness shifts do not count as differences


class PretrainedFeatures(FeatureNetwork):
    """A CLIP or DINO(v2) image encoder from a local transformers folder, loaded offline."""

    def __init__(self, folder: str | Path, device: str = "cpu"):
        if not Path(folder).is_dir():
            raise CopyGuardError("the copy guard model folder %(folder)s does not exist "
                                 "(DOMAINSTUDIO_COPY_GUARD_MODEL)", folder=str(folder))
        try:
            from transformers import AutoConfig, AutoImageProcessor, AutoModel, CLIPModel
        except ImportError as exc:  # pragma: no cover - transformers is a dependency
            raise CopyGuardError("the copy guard model needs the transformers package (%(detail)s)",
                                 detail=str(exc)) from exc
        folder = Path(folder)
        try:
            config = AutoConfig.from_pretrained(folder, local_files_only=True)
            self.processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
            cls = CLIPModel if config.model_type == "clip" else AutoModel
            self.model = cls.from_pretrained(folder, local_files_only=True).to(device).eval()
        except (OSError, ValueError, KeyError) as exc:
            raise CopyGuardError("the copy guard model at %(folder)s could not be loaded: %(detail)s",
                                 folder=str(folder), detail=str(exc)[:300]) from exc
        self.device = device
        self.is_clip = config.model_type == "clip"
        self.kind = "clip" if self.is_clip else "dino"
        self.default_threshold = PRETRAINED_THRESHOLDS[self.kind]
        # the family and the folder: no English words, so the name reads in every language
        family = "CLIP" if self.is_clip else "DINO" if "dino" in config.model_type else config.model_type
        self.name = f"{family} ({folder.name})"

    @torch.no_grad()
    def features(self, images):
        out = []
        for i in range(0, len(images), 32):
            batch = [im.convert("RGB") for im in images[i:i + 32]]
            pixels = self.processor(images=batch, return_tensors="pt")["pixel_values"].to(self.device)
            if self.is_clip:
                embeds = self.model.get_image_features(pixel_values=pixels)
                # a tensor before transformers 5; an output whose pooler_output holds it since
                out.append(getattr(embeds, "pooler_output", embeds).float().cpu())
            else:  # DINO: the CLS token of the last layer
                out.append(self.model(pixel_values=pixels).last_hidden_state[:, 0].float().cpu())
        return torch.cat(out) if out else torch.zeros(0, 1)


def feature_network(base_model: str, configured: str = "", device: str = "cpu") -> FeatureNetwork:
    """The network that measures galleries of ``base_model`` (see the module docstring)."""
    if configured:
        return PretrainedFeatures(configured, device)
    if base_model in FMNIST_MODELS:
        return ClassifierFeatures()
    return PixelFeatures()


# ------------------------------------------------------------------------------ the guard
@dataclass
class Measurement:
    distance: float
    photo_id: object  # the nearest training photo's id
    near_copy: bool


class CopyGuard:
    """Training photo features, computed once per gallery job; measures images batch by batch."""

    def __init__(self, network: FeatureNetwork, photos: Sequence[Image.Image], photo_ids: Sequence,
                 threshold: float | None = None):
        if len(photos) != len(photo_ids):
            raise ValueError("one id per training photo")
        self.network, self.photos, self.photo_ids = network, list(photos), list(photo_ids)
        self.threshold = network.default_threshold if threshold is None else float(threshold)
        self.photo_features = network.features(self.photos)

    def measure(self, images: Sequence[Image.Image]) -> list[Measurement]:
        """The nearest training photo of each image, its distance, and whether it is a near
        copy (strictly under the threshold). Without training photos nothing is measured."""
        if not images or not self.photo_ids:
            return []
        d = cosine_distances(self.network.features(images), self.photo_features)
        dist, idx = d.min(1)
        return [Measurement(float(x), self.photo_ids[int(i)], float(x) < self.threshold) for x, i in zip(dist, idx)]

    def diversity(self, images: Sequence[Image.Image], proxy_lpips: bool) -> dict:
        """{"mean_pairwise_distance", "proxy_intra_lpips", "images"} of a gallery's images.
        The proxy Intra-LPIPS (the classifier's conv features, images clustered around the
        training photos) only where that classifier fits the model: the demo model."""
        result = {"mean_pairwise_distance": mean_pairwise_distance(self.network.features(images)),
                  "proxy_intra_lpips": None, "images": len(images)}
        if proxy_lpips and len(images) >= 2 and self.photos:
            from worker.domainstudio.metrics import ProxyMetrics

            net = self.network.net if isinstance(self.network, ClassifierFeatures) else None
            result["proxy_intra_lpips"] = ProxyMetrics(net).intra_lpips(model_view(images), model_view(self.photos))[
                "intra_lpips"]
        return result
