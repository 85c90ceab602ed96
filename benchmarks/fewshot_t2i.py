"""Text-to-image few-shot benchmark: DreamBooth against DomainStudio on the demo model.

    python benchmarks/fewshot_t2i.py --seed 0 [--steps 400] [--samples 1000]

The text-to-image demo model ``builtin:fmnist-sd-32`` has never seen a sneaker; the seed
draws 10 sneaker shots from the train split. Each method adapts it through the core's
``adapt()`` with instance prompt "a photo of sks shoe" and class prompt "a photo of a shoe",
the same steps, batch, learning rate and seed:

  (a) dreambooth      DreamBooth LoRA, no prior preservation
  (b) dreambooth-prior DreamBooth LoRA with prior preservation
  (c) domainstudio    DomainStudio LoRA, the core's defaults
  (d) official        DomainStudio LoRA with the official settings (terms at every t)
  (e) full            DomainStudio, full UNet

Metrics, on the shipped Fashion-MNIST classifier (proxies, not comparable with published
figures), from ``--samples`` images of "a photo of sks shoe":
- fidelity: proxy-FID against every real sneaker (train + test);
- diversity: proxy Intra-LPIPS against the shots (the paper's clustering);
- copies: the share of samples closer to a shot (cosine distance of the classifier's
  penultimate features) than 99% of real sneakers are to their nearest other real sneaker;
- prior preservation (language drift): the share of "a photo of a shoe" samples classified as
  sandal or ankle boot, and of "a photo of a bag" / "a photo of a dress" samples classified
  correctly, for the unadapted model and each method (a quarter of --samples each).
Finished adaptations and evaluations under --work-dir are reused, so methods can run in
separate processes and a last call assembles the table.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from worker.domainstudio import AdaptConfig, adapt, fmnist, metric_net, sample  # noqa: E402
from worker.domainstudio.metrics import ProxyMetrics  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NO_TERMS = dict(l_img=0.0, l_hf=0.0, l_hfmse=0.0)
METHODS = {
    "dreambooth": dict(mode="lora", prior_weight=0.0, **NO_TERMS),
    "dreambooth-prior": dict(mode="lora", **NO_TERMS),
    "domainstudio": dict(mode="lora"),
    "official": dict(mode="lora", ds_max_timestep=1000, pairwise_max_timestep=1000, l_img=100.0, l_hf=100.0,
                     l_hfmse=0.1, source="unpaired"),
    "full": dict(mode="full"),
}
LABELS = {"source": "unadapted demo model", "dreambooth": "(a) DreamBooth LoRA, no prior",
          "dreambooth-prior": "(b) DreamBooth LoRA + prior", "domainstudio": "(c) DomainStudio LoRA (ours)",
          "official": "(d) DomainStudio LoRA, official settings", "full": "(e) DomainStudio full UNet"}
INSTANCE_PROMPT = "a photo of sks shoe"
PRIOR_PROMPTS = {"a photo of a shoe": (5, 9), "a photo of a bag": (8,), "a photo of a dress": (3,)}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0, help="draws the 10 shots and seeds the runs")
    p.add_argument("--shots", type=int, default=10)
    p.add_argument("--steps", type=int, default=400, help="adaptation steps, the same for every method")
    p.add_argument("--samples", type=int, default=1000, help="images of the instance prompt per method")
    p.add_argument("--sample-steps", type=int, default=25)
    p.add_argument("--num-class-images", type=int, default=200)
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {', '.join(METHODS)}")
    p.add_argument("--no-source", action="store_true", help="skip scoring the unadapted model")
    p.add_argument("--base-model", default="builtin:fmnist-sd-32")
    p.add_argument("--max-reference", type=int, default=0, help="cap on real sneakers (0 = all; smoke tests)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="a setting for every method (e.g. learning_rate=1e-3); repeatable")
    p.add_argument("--ds-set", action="append", default=[], metavar="NAME=VALUE",
                   help="a setting for the DomainStudio methods only (domainstudio, full); repeatable, for tuning")
    p.add_argument("--tag", default="")
    p.add_argument("--work-dir", type=Path, default=ROOT / "var" / "fewshot_t2i")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)
    unknown = set(args.methods.split(",")) - set(METHODS)
    if unknown:
        p.error(f"unknown method(s) {sorted(unknown)}; choose from {list(METHODS)}")
    try:
        args.settings, args.ds_settings = _pairs(args.set), _pairs(args.ds_set)
    except ValueError as exc:
        p.error(str(exc))
    return args


def _pairs(items: list[str]) -> dict:
    """NAME=VALUE strings as AdaptConfig values (checked by AdaptConfig.from_dict)."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set/--ds-set take NAME=VALUE, got {item!r}")
        out[name.strip()] = value.strip()
    AdaptConfig.from_dict({"base_model": "x", **out})  # unknown names and bad values fail here
    return out


def run_name(args) -> str:
    return f"fewshot-t2i-k{args.shots}-s{args.seed}-{args.steps}" + (f"-{args.tag}" if args.tag else "")


def method_config(args, method: str) -> AdaptConfig:
    tuned = args.ds_settings if method in ("domainstudio", "full") else {}
    return AdaptConfig.from_dict(dict(
        base_model=args.base_model, steps=args.steps, seed=args.seed, class_word="shoe",
        class_prompt="a photo of a {class}", num_class_images=args.num_class_images,
        # class images depend on the base model and the class prompt only: shared
        class_images_dir=str(args.work_dir / "class_images"),
        preview_every=0, checkpoint_every=max(args.steps // 4, 1), device="cpu",
        **{**METHODS[method], **args.settings, **tuned}))


def _images(model, prompt: str, n: int, seed: int, args) -> torch.Tensor:
    images = sample(model, n, prompt=prompt, seed=seed, steps=args.sample_steps, batch_size=100, device="cpu")
    return fmnist.from_pil([g.image for g in images])


def copy_threshold(metrics: ProxyMetrics, reference: torch.Tensor) -> float:
    """The 1st percentile of each real sneaker's distance to its nearest other real sneaker."""
    f = F.normalize(metrics.features(reference)["penultimate"], dim=1)
    d = 1 - f @ f.T
    d.fill_diagonal_(float("inf"))
    return torch.quantile(d.min(1).values, 0.01).item()


def copy_share(metrics: ProxyMetrics, samples: torch.Tensor, shots: torch.Tensor, threshold: float) -> float:
    fs = F.normalize(metrics.features(samples)["penultimate"], dim=1)
    ft = F.normalize(metrics.features(shots)["penultimate"], dim=1)
    return ((1 - fs @ ft.T).min(1).values < threshold).float().mean().item()


def prior_preservation(model, net, args) -> dict:
    """Per prior prompt, the share of samples the classifier puts in the classes it names."""
    out = {}
    for prompt, classes in PRIOR_PROMPTS.items():
        x = _images(model, prompt, max(args.samples // 4, 1), 2_000_000 + args.seed, args)
        predicted, _ = metric_net.classify(net, x)
        out[prompt] = sum((predicted == c).float() for c in classes).mean().item()
    return out


def evaluate(name: str, model, metrics: ProxyMetrics, ctx: dict, args) -> dict:
    started = time.time()
    x = _images(model, INSTANCE_PROMPT, args.samples, 1_000_000 + args.seed, args)
    row = metrics.evaluate(x, None, ctx["shots"], reference_features=ctx["ref_feats"])
    predicted, confidence = metric_net.classify(metrics.net, x)
    row.update(method=name, label=LABELS[name],
               sneaker=(predicted == 7).float().mean().item(),
               unsure=(confidence < metric_net.UNSURE_BELOW).float().mean().item(),
               copies=copy_share(metrics, x, ctx["shots"], ctx["threshold"]),
               prior=prior_preservation(model, metrics.net, args),
               sample_seconds=round(time.time() - started))
    grid = f"{run_name(args)}-{name}.png"
    fmnist.image_grid(x[:64], nrow=8).save(args.out / grid)
    row["grid"] = grid
    print(f"{name}: FID {row['proxy_fid']:.2f} Intra-LPIPS {row['proxy_intra_lpips']:.4f} "
          f"copies {row['copies']:.2%} sneaker {row['sneaker']:.0%} prior {row['prior']}", flush=True)
    return row


def _cached(folder: Path, args) -> dict | None:
    path = folder / f"benchmark_row-{args.samples}-{args.sample_steps}-{args.max_reference}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _keep(folder: Path, args, row: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"benchmark_row-{args.samples}-{args.sample_steps}-{args.max_reference}.json").write_text(
        json.dumps(row, indent=2) + "\n")


def run(args) -> list[dict]:
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    shots, indices = fmnist.draw_shots(7, args.shots, args.seed)
    fmnist.image_grid(shots, nrow=min(args.shots, 10)).save(args.out / f"{run_name(args)}-shots.png")
    reference = fmnist.class_images(7, ("train", "t10k"))
    if args.max_reference:
        reference = reference[:args.max_reference]
    metrics = ProxyMetrics()
    ctx = {"shots": shots, "ref_feats": metrics.features(reference)["penultimate"],
           "threshold": copy_threshold(metrics, reference)}
    photos = [_pil(a) for a in fmnist.to_uint8(shots)]
    rows = []
    for name in ([] if args.no_source else ["source"]) + args.methods.split(","):
        # the unadapted model's row depends on the shots (seed) only, not on the steps
        folder = args.work_dir / (f"source-k{args.shots}-s{args.seed}" if name == "source" else run_name(args)) / name
        row = _cached(folder, args)
        if row is None:
            model, started = args.base_model, time.time()
            if name != "source":
                adapt(method_config(args, name), photos, folder, resume=True)
                model = folder
            seconds = round(time.time() - started)
            row = evaluate(name, model, metrics, ctx, args)
            row["adapt_seconds"] = seconds
            _keep(folder, args, row)
        rows.append(row)
    write_report(args, rows, indices, len(reference), ctx["threshold"])
    return rows


def _pil(array):
    from PIL import Image

    return Image.fromarray(array).convert("RGB")


def write_report(args, rows: list[dict], indices, n_reference: int, threshold: float) -> None:
    base = next((r for r in rows if r["method"] == "dreambooth-prior"), None)
    lines = [f"# Text-to-image few-shot benchmark: 10 sneakers, seed {args.seed}, {args.steps} steps", "",
             f"{args.base_model} adapted to {args.shots} sneakers (train indices {list(map(int, indices))}); "
             f"{args.samples} samples of \"{INSTANCE_PROMPT}\" per method (DPM-Solver++, {args.sample_steps} steps, "
             f"guidance 7.5); proxy-FID against {n_reference} real sneakers; copies: closer to a shot than "
             f"{threshold:.4f} (1st percentile of real sneakers' nearest-neighbour distance); prior: share of "
             f"{max(args.samples // 4, 1)} samples per prompt in the named classes (shoe: sandal or ankle boot).", "",
             "| method | proxy-FID | proxy Intra-LPIPS | Intra-LPIPS / (b) | FID / (b) | copies | sneaker | unsure "
             "| shoe prompt | bag | dress | adapt s | sample s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ratio_i = f"{r['proxy_intra_lpips'] / base['proxy_intra_lpips']:.2f}" if base else "-"
        ratio_f = f"{r['proxy_fid'] / base['proxy_fid']:.2f}" if base else "-"
        p = r["prior"]
        lines.append(f"| {r['label']} | {r['proxy_fid']:.2f} | {r['proxy_intra_lpips']:.4f} | {ratio_i} | {ratio_f} "
                     f"| {r['copies']:.1%} | {r['sneaker']:.0%} | {r['unsure']:.0%} | {p['a photo of a shoe']:.0%} "
                     f"| {p['a photo of a bag']:.0%} | {p['a photo of a dress']:.0%} | {r['adapt_seconds']} "
                     f"| {r['sample_seconds']} |")
    lines += ["", "Grids: " + ", ".join(f"[{r['method']}]({r['grid']})" for r in rows), ""]
    (args.out / f"{run_name(args)}.md").write_text("\n".join(lines))
    (args.out / f"{run_name(args)}.json").write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    print("\n".join(lines))


def main(argv=None) -> int:
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
