"""Does the text-to-image demo model draw what its prompt names? Measured with the shipped
Fashion-MNIST classifier.

For each known class prompt ("a photo of a bag", ...): the share of N samples classified as
that class, and the share the classifier is unsure of (< 60%; real test images: 6%). For
"a photo of a shoe": the shares classified as sandal, ankle boot and sneaker (the model has
never seen a sneaker, so it should draw the other two). Default sampler and guidance, as the
app samples. Writes a Markdown table and one grid per prompt.

    python benchmarks/prompt_following.py                 # 100 samples per prompt
    python benchmarks/prompt_following.py -n 20 --model builtin:fmnist-sd-32
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from worker.domainstudio import fmnist, metric_net  # noqa: E402
from worker.domainstudio.models import load_base_model  # noqa: E402
from worker.domainstudio.pretrain_sd import CLASS_WORDS, class_prompt  # noqa: E402
from worker.domainstudio.sampling import sample_with  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SHOE_PROMPT = "a photo of a shoe"


def prompts() -> dict[str, int | None]:
    """Prompt -> the class it names (None for "shoe", which names two)."""
    out: dict[str, int | None] = {class_prompt(label): label for label in CLASS_WORDS}
    out[SHOE_PROMPT] = None
    return out


def sample_prompt(base, prompt: str, n: int, seed: int, batch_size: int = 50) -> torch.Tensor:
    images = sample_with(base, n, prompt=prompt, seed=seed, batch_size=batch_size)
    return fmnist.from_pil([g.image for g in images])


def measure(base, net, prompt: str, label: int | None, n: int, seed: int) -> dict:
    x = sample_prompt(base, prompt, n, seed)
    predicted, confidence = metric_net.classify(net, x)
    row = {"prompt": prompt, "n": n, "unsure": (confidence < metric_net.UNSURE_BELOW).float().mean().item(),
           "images": x}
    if label is not None:
        row["correct"] = (predicted == label).float().mean().item()
    else:
        for name, c in (("sandal", 5), ("ankle boot", 9), ("sneaker", 7)):
            row[name] = (predicted == c).float().mean().item()
    return row


def table(rows: list[dict], model: str, seconds: float) -> str:
    lines = [f"# Prompt following of {model}", "",
             f"Shipped Fashion-MNIST classifier on {rows[0]['n']} samples per prompt (DPM-Solver++, "
             f"25 steps, guidance 7.5, seeds 0..n-1); unsure = top probability < 0.6. "
             f"{seconds:.0f} s in all.", "",
             "| prompt | classified as named | unsure | grid |", "|---|---:|---:|---|"]
    for r in rows:
        if "correct" in r:
            lines.append(f"| {r['prompt']} | {r['correct']:.0%} | {r['unsure']:.0%} | {r['grid']} |")
    shoe = next(r for r in rows if "correct" not in r)
    lines += ["", "| prompt | sandal | ankle boot | sneaker | unsure | grid |", "|---|---:|---:|---:|---:|---|",
              f"| {shoe['prompt']} | {shoe['sandal']:.0%} | {shoe['ankle boot']:.0%} | {shoe['sneaker']:.0%} "
              f"| {shoe['unsure']:.0%} | {shoe['grid']} |"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="builtin:fmnist-sd-32")
    p.add_argument("-n", type=int, default=100, help="samples per prompt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    started = time.monotonic()
    base, net = load_base_model(args.model), metric_net.load_metric_net()
    name = args.model.split(":")[-1].replace("/", "-")
    rows = []
    for prompt, label in prompts().items():
        row = measure(base, net, prompt, label, args.n, args.seed)
        grid = f"{name}-prompt-{prompt.removeprefix('a photo of ').replace(' ', '-')}.png"
        args.out.mkdir(parents=True, exist_ok=True)
        fmnist.image_grid(row.pop("images")[:64], nrow=8, scale=2).save(args.out / grid)
        row["grid"] = grid
        rows.append(row)
        print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    text = table(rows, args.model, time.monotonic() - started)
    (args.out / f"{name}-prompts.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
