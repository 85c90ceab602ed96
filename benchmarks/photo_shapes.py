"""Padding or aspect-ratio buckets for non-square product photos: what each costs.

    python3 benchmarks/photo_shapes.py

1. Per aspect ratio: the share of the photo a centre crop throws away (the old behaviour),
   and the share of the training square that padding fills (compute spent on masked pixels).
2. Buckets (kohya's scheme: sides in steps of 64, area at most 512x512, each photo to the
   bucket nearest its aspect ratio): in photo sets of 10, 20 and 50 photos drawn from a mix
   of common camera and shop aspect ratios (with a little jitter, as people crop), the share
   of photos whose bucket holds fewer than 4 photos (cannot fill a batch of 4) and fewer
   than 3 (the DomainStudio pairwise terms compare S = 3 samples of one batch: a batch must
   share one shape, so a smaller bucket gives them fewer samples, or none).
Numbers only from geometry and seeded draws: no model, runs in a second.
"""
from __future__ import annotations

import random

RATIOS = {"1:1": 1.0, "4:5": 0.8, "3:4": 0.75, "2:3": 2 / 3, "3:5 bottle": 0.6, "9:16": 9 / 16, "4:3": 4 / 3, "16:9": 16 / 9}
# A shop's photo folder: mostly portrait phone shots and squares, some landscape.
MIX = [("3:4", 0.35), ("1:1", 0.25), ("4:3", 0.15), ("2:3", 0.10), ("9:16", 0.10), ("16:9", 0.05)]


def crop_loss(ratio: float) -> float:
    """Share of the photo a centre crop to a square removes."""
    return 1 - min(ratio, 1 / ratio)


def padding_share(ratio: float) -> float:
    """Share of the square that is padding when the whole photo is fitted in."""
    return 1 - min(ratio, 1 / ratio)


def buckets(resolution: int = 512, step: int = 64) -> list[tuple[int, int]]:
    out = []
    for w in range(step * 4, resolution * 2 + 1, step):
        h = (resolution * resolution // w) // step * step
        if h >= step * 4:
            out.append((w, h))
    return out


def bucket_of(ratio: float, choices: list[tuple[int, int]]) -> tuple[int, int]:
    return min(choices, key=lambda wh: abs(wh[0] / wh[1] - ratio))


def draw_set(n: int, rng: random.Random) -> list[float]:
    names, weights = zip(*MIX)
    return [RATIOS[rng.choices(names, weights)[0]] * rng.uniform(0.97, 1.03) for _ in range(n)]


def bucket_shortfall(n: int, trials: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean share of photos in buckets with < 4 and < 3 photos, and mean number of buckets."""
    rng, choices = random.Random(seed), buckets()
    under4 = under3 = count = 0.0
    for _ in range(trials):
        sizes: dict[tuple[int, int], int] = {}
        for ratio in draw_set(n, rng):
            key = bucket_of(ratio, choices)
            sizes[key] = sizes.get(key, 0) + 1
        under4 += sum(v for v in sizes.values() if v < 4) / n
        under3 += sum(v for v in sizes.values() if v < 3) / n
        count += len(sizes)
    return under4 / trials, under3 / trials, count / trials


def main() -> None:
    print("aspect      centre crop loses   padding fills")
    for name, ratio in RATIOS.items():
        print(f"{name:<11} {crop_loss(ratio):>16.0%} {padding_share(ratio):>15.0%}")
    names, weights = zip(*MIX)
    mean_pad = sum(w * padding_share(RATIOS[n]) for n, w in MIX) / sum(weights)
    print(f"mix mean    {mean_pad:>16.0%} {mean_pad:>15.0%}")
    print()
    print("photos  buckets used  photos in buckets <4  <3 (S=3 pairwise terms)")
    for n in (10, 20, 50):
        u4, u3, k = bucket_shortfall(n)
        print(f"{n:>6} {k:>13.1f} {u4:>21.0%} {u3:>4.0%}")


if __name__ == "__main__":
    main()
