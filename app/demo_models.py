"""What the builtin demo models can draw, in the user's words, so that pages set honest
expectations before and after a run (the web side never loads a model to find out).

A second demo model slots in with one more entry; pages ask ``demo_model(spec)`` and show
``draws`` and, for colour photos on a grayscale model, the colour notice.
"""
from __future__ import annotations

from dataclasses import dataclass

from app.errors import N_


@dataclass(frozen=True)
class DemoModel:
    spec: str
    draws: str  # English msgid: what its images show
    colour: bool  # draws colour images
    size: int  # pixels per side


DEMO_MODELS = {
    m.spec: m
    for m in (
        DemoModel("builtin:fmnist-sd-32",
                  N_("32×32 grey pictures of clothing, shoes and bags in the style of Fashion-MNIST, from a prompt; it "
                     "knows the words t-shirt, trousers, pullover, dress, coat, shirt, bag, sandal, ankle boot and "
                     "shoe, and has never seen a sneaker (adapted to photos of sneakers, it learns them as “sks "
                     "shoe”); not photos of your product"), colour=False, size=32),
        DemoModel("builtin:fmnist-ddpm-32",
                  N_("32×32 grayscale pictures in the style of Fashion-MNIST clothing, shoes and bags; not photos of "
                     "your product"), colour=False, size=32),
    )
}
# the copy guard's network for the demo models (worker/copyguard.py ClassifierFeatures.kind):
# trained on 28 px grayscale clothing, so its distances mean little for other photos
GRAYSCALE_GUARD_NETWORKS = ("Fashion-MNIST classifier",)


def demo_model(spec: str | None) -> DemoModel | None:
    """The demo model ``spec`` names, or None for a real (or test) base model."""
    return DEMO_MODELS.get(spec or "")


def guard_fits(feature_network: str | None, photos_in_colour: bool) -> bool:
    """False when the copy guard measured colour photos with a grayscale clothing network."""
    return not (photos_in_colour and feature_network and feature_network.startswith(GRAYSCALE_GUARD_NETWORKS))
