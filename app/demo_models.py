"""What the builtin demo models can draw, in the user's words, so that pages set honest
expectations before and after a run (the web side never loads a model to find out).

A second demo model slots in with one more entry; pages ask ``demo_model(spec)`` and show
``draws`` and, for colour photos on a grayscale model, the colour notice.
"""
from __future__ import annotations

from dataclasses import dataclass

from app.errors import N_
from worker.domainstudio import demo_words
from worker.domainstudio.config import AdaptConfig
from worker.domainstudio.model_kinds import SD1, SD2, SDXL

TEXT_DEMO = "builtin:fmnist-sd-32"


@dataclass(frozen=True)
class DemoModel:
    spec: str
    draws: str  # English msgid: what its images show
    colour: bool  # draws colour images
    size: int  # pixels per side


DEMO_MODELS = {
    m.spec: m
    for m in (
        DemoModel(TEXT_DEMO,
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


TEXT_TO_IMAGE_FAMILIES = (SD1, SD2, SDXL)  # "" = only the worker can tell


def run_prompts(spec: str, family: str, class_word: str, settings: dict | None = None) -> list[str] | None:
    """The prompts a run of this model trains and samples with, for the run form and the run
    page: the instance prompt first (previews use it); the text-to-image demo model says them
    in its own words and cycles its caption templates (as the core's adapt.gallery_prompts)."""
    settings = settings or {}
    token = settings.get("instance_token") or "sks"
    if spec == TEXT_DEMO:
        return demo_words.gallery_prompts(class_word, token)
    if family in TEXT_TO_IMAGE_FAMILIES:
        config = AdaptConfig(class_word=class_word, instance_token=token,
                             instance_prompt=settings.get("instance_prompt") or None)
        return [config.photo_prompt("")]  # the core's instance prompt
    return None
