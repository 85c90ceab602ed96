"""Helpers of the end-to-end browser test: sample product photos, numbered full-page
screenshots, and checks a person would notice (script errors, sideways scrolling)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image


def sneaker_photos(folder: Path, n: int = 10, side: int = 256) -> list[Path]:
    """``n`` Fashion-MNIST sneakers (the class the text-to-image demo model never saw), grey
    on RGB and upscaled to ``side`` px, as a team trying the demo would upload them."""
    from worker.domainstudio import fmnist

    folder.mkdir(parents=True, exist_ok=True)
    shots, indices = fmnist.draw_shots(7, n, seed=0)
    paths = []
    for i, (array, index) in enumerate(zip(fmnist.to_uint8(shots), indices)):
        path = folder / f"sneaker-{i + 1:02d}-{int(index)}.png"
        Image.fromarray(array).convert("RGB").resize((side, side), Image.Resampling.BICUBIC).save(path)
        paths.append(path)
    return paths


# Loads every image of the page, lazy ones included (a full-page screenshot does not scroll,
# so images below the window would stay blank), and returns those that failed to load.
LOAD_ALL_IMAGES_JS = """async () => {
  const images = Array.from(document.images);
  images.forEach((img) => { img.loading = "eager"; });
  const settled = (img) => img.complete ? null : new Promise((done) => {
    img.addEventListener("load", done, { once: true }); img.addEventListener("error", done, { once: true });
  });
  await Promise.race([Promise.all(images.map(settled)), new Promise((done) => setTimeout(done, 10000))]);
  return images.filter((img) => !img.complete || img.naturalWidth === 0).map((img) => img.currentSrc || img.src);
}"""


@dataclass
class PageProblems:
    """What went wrong in the browser while the test drove it: uncaught script errors,
    console errors (a CSP violation or a failed request shows up here) and pages wider
    than the window. Collected as they happen and checked at the end, so one problem
    does not hide the screenshots of the pages after it."""

    problems: list[str] = field(default_factory=list)

    def watch(self, page) -> None:
        page.on("pageerror", lambda exc: self.problems.append(f"{page.url}: script error: {exc}"))
        page.on("console", lambda msg: msg.type == "error" and self.problems.append(
            f"{page.url}: console error: {msg.text}"))

    def check_width(self, page, what: str) -> None:
        """A page wider than the window makes a person scroll sideways."""
        overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
        if overflow > 1:
            self.problems.append(f"{what} ({page.url}): {overflow}px wider than the {page.viewport_size['width']}px window")


@dataclass
class Screenshots:
    """Full-page screenshots numbered in the order they are taken (NN-name.png), each
    taken once every image of the page has loaded; a broken image is a problem."""

    folder: Path
    problems: PageProblems
    taken: list[Path] = field(default_factory=list)

    def take(self, page, name: str) -> Path:
        page.wait_for_load_state("load")
        for src in page.evaluate(LOAD_ALL_IMAGES_JS):
            self.problems.problems.append(f"{page.url}: image did not load: {src}")
        # from the top, as the page opens: a sticky bar is drawn where the window is, so a
        # page scrolled to an anchor (#packs) would show it across the middle of the picture
        page.evaluate("() => window.scrollTo(0, 0)")
        path = self.folder / f"{len(self.taken) + 1:02d}-{re.sub(r'[^a-z0-9-]+', '-', name.lower())}.png"
        page.screenshot(path=str(path), full_page=True)
        self.taken.append(path)
        return path
