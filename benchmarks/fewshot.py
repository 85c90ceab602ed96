"""Few-shot quality benchmark on Fashion-MNIST footwear: plain fine-tuning vs DomainStudio.

    python benchmarks/fewshot.py --target-class 7 --shots 10 --seed 0 [--steps 600]

Draws the shots from the train split of the target class, adapts the source model
``builtin:fmnist-ddpm-32`` (trained without footwear) through the core's ``adapt()`` with
(a) plain fine-tuning (L_simple only), (b) DomainStudio (all terms, the core's defaults),
(c) DomainStudio without the two high-frequency terms and (d) without the image pairwise
term -- same steps, learning rate and batch for all -- then samples each model and scores
it with the *proxy* metrics (see worker/domainstudio/metrics.py): proxy-FID and proxy-KID
against every image of the target class (train + test) and proxy Intra-LPIPS against the
shots. The unadapted source model is scored the same way. Writes a markdown table, a JSON
file and one sample grid per method to benchmarks/results/. Finished adaptations under
--work-dir are reused, so a rerun only re-evaluates.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from worker.domainstudio import AdaptConfig, adapt, sample  # noqa: E402
from worker.domainstudio import fmnist  # noqa: E402
from worker.domainstudio.metrics import ProxyMetrics  # noqa: E402
from worker.domainstudio.models import load_base_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# Loss weights per method; None keeps the core's default for unconditional models.
METHODS = {
    "plain": dict(l_img=0.0, l_hf=0.0, l_hfmse=0.0),
    "domainstudio": dict(l_img=None, l_hf=None, l_hfmse=None),
    "no-hf": dict(l_img=None, l_hf=0.0, l_hfmse=0.0),
    "no-img": dict(l_img=0.0, l_hf=None, l_hfmse=None),
}
LABELS = {
    "source": "source model, unadapted",
    "plain": "plain fine-tuning (L_simple)",
    "domainstudio": "DomainStudio (all terms)",
    "no-hf": "DomainStudio without HF terms",
    "no-img": "DomainStudio without image pairwise term",
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target-class", type=int, default=7, help="Fashion-MNIST class (7 = sneaker)")
    p.add_argument("--shots", type=int, default=10)
    p.add_argument("--seed", type=int, default=0, help="chooses the shots and seeds the runs")
    p.add_argument("--steps", type=int, default=600, help="adaptation steps, the same for every method")
    p.add_argument("--batch-size", type=int, default=None, help="default: the core's")
    p.add_argument("--learning-rate", type=float, default=None, help="default: the core's")
    p.add_argument("--ema-decay", type=float, default=None, help="default: the core's")
    p.add_argument("--ds-max-timestep", type=int, default=None, help="default: the core's")
    p.add_argument("--l-img", type=float, default=None, help="DomainStudio weight override (methods that use it)")
    p.add_argument("--l-hf", type=float, default=None)
    p.add_argument("--l-hfmse", type=float, default=None)
    p.add_argument("--num-similarity-samples", type=int, default=None)
    p.add_argument("--pairwise-max-timestep", type=int, default=None, help="default: the core's")
    p.add_argument("--methods", default="plain,domainstudio,no-hf,no-img",
                   help=f"comma-separated subset of {', '.join(METHODS)}")
    p.add_argument("--no-source", action="store_true", help="skip scoring the unadapted source model")
    p.add_argument("--samples", type=int, default=1000, help="images sampled per method")
    p.add_argument("--sample-steps", type=int, default=25)
    p.add_argument("--scheduler", default=None, help="sampler (default: the base model's own)")
    p.add_argument("--base-model", default="builtin:fmnist-ddpm-32")
    p.add_argument("--max-reference", type=int, default=0, help="cap on reference images (0 = all; for smoke tests)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--device", default="cpu", help="cpu, or cuda on a GPU machine (adaptation and sampling)")
    p.add_argument("--tag", default="", help="suffix for output names (e.g. a tuning variant)")
    p.add_argument("--work-dir", type=Path, default=ROOT / "var" / "fewshot", help="adapted runs go here")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)
    unknown = set(args.methods.split(",")) - set(METHODS)
    if unknown:
        p.error(f"unknown method(s) {sorted(unknown)}; choose from {list(METHODS)}")
    # named, not left to sample(), so that the table and the cached source row say which
    args.scheduler = args.scheduler or load_base_model(args.base_model).default_sampler
    return args


def run_name(args) -> str:
    tag = f"-{args.tag}" if args.tag else ""
    return f"fewshot-c{args.target_class}-k{args.shots}-s{args.seed}-{args.steps}{tag}"


def method_config(args, method: str) -> AdaptConfig:
    """The same steps, learning rate, batch, EMA and seed for every method; only the loss weights differ."""
    weights = dict(METHODS[method])
    for name in ("l_img", "l_hf", "l_hfmse"):
        override = getattr(args, name)
        if weights[name] is None and override is not None:  # a weight the method uses
            weights[name] = override
    extra = {k: v for k, v in dict(ds_max_timestep=args.ds_max_timestep,
                                    num_similarity_samples=args.num_similarity_samples,
                                    pairwise_max_timestep=args.pairwise_max_timestep).items() if v is not None}
    return AdaptConfig(base_model=args.base_model, steps=args.steps, batch_size=args.batch_size,
                       learning_rate=args.learning_rate, ema_decay=args.ema_decay, seed=args.seed,
                       preview_every=0, checkpoint_every=max(args.steps // 4, 1), device=args.device,
                       **weights, **extra)


def draw_samples(model, args) -> tuple[torch.Tensor, float]:
    """``args.samples`` images from a run folder or base spec, as [N, 1, 32, 32]; the same seeds for all."""
    t0 = time.time()
    images = sample(model, args.samples, seed=1_000_000 + args.seed, steps=args.sample_steps,
                    scheduler=args.scheduler, batch_size=100, device=args.device)
    return fmnist.from_pil([g.image for g in images]), time.time() - t0


def evaluate(name, samples, metrics: ProxyMetrics, ref_feats, shots, args, seconds: dict) -> dict:
    row = metrics.evaluate(samples, None, shots, reference_features=ref_feats)
    row.update(method=name, label=LABELS[name], **seconds)
    grid = args.out / f"{run_name(args)}-{name}.png"
    fmnist.image_grid(samples[:64], nrow=8).save(grid)
    row["grid"] = grid.name
    print(f"{name}: proxy-FID {row['proxy_fid']:.2f}  proxy-KID {row['proxy_kid']:.4f}  "
          f"proxy Intra-LPIPS {row['proxy_intra_lpips']:.4f}  {seconds}", flush=True)
    return row


def run(args) -> list[dict]:
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    shots, indices = fmnist.draw_shots(args.target_class, args.shots, args.seed)
    fmnist.image_grid(shots, nrow=min(args.shots, 10)).save(args.out / f"{run_name(args)}-shots.png")
    photos = [_pil(x) for x in fmnist.to_uint8(shots)]
    reference = fmnist.class_images(args.target_class, ("train", "t10k"))
    if args.max_reference:
        reference = reference[:args.max_reference]
    metrics = ProxyMetrics()
    ref_feats = metrics.features(reference)["penultimate"]
    rows = []
    if not args.no_source:
        folder = args.work_dir / run_name(args) / "source"
        row = _cached_row(folder, args)
        if row is None:
            samples, secs = draw_samples(args.base_model, args)
            row = evaluate("source", samples, metrics, ref_feats, shots, args,
                           {"adapt_seconds": 0.0, "sample_seconds": round(secs)})
            _save_row(folder, args, row)
        rows.append(row)
    for method in args.methods.split(","):
        folder = args.work_dir / run_name(args) / method
        t0 = time.time()
        result = adapt(method_config(args, method), photos, folder, resume=True)
        trained = result.resumed_from < args.steps
        row = None if trained else _cached_row(folder, args)
        if row is None:
            adapt_secs = time.time() - t0 if trained else _recorded_seconds(folder)
            _record_seconds(folder, adapt_secs)
            samples, secs = draw_samples(folder, args)
            row = evaluate(method, samples, metrics, ref_feats, shots, args,
                           {"adapt_seconds": round(adapt_secs), "sample_seconds": round(secs)})
            row["settings"] = _run_settings(folder)
            _save_row(folder, args, row)
        rows.append(row)
    write_report(args, rows, indices, len(reference))
    return rows


def _row_file(folder: Path, args) -> Path:
    """Where a finished evaluation is kept: one file per sampling setup, so that methods can
    be run in separate processes (one per core) and a last call assembles the table."""
    return folder / f"benchmark_row-{args.samples}-{args.sample_steps}-{args.scheduler}-{args.max_reference}.json"


def _cached_row(folder: Path, args) -> dict | None:
    path = _row_file(folder, args)
    return json.loads(path.read_text()) if path.exists() else None


def _save_row(folder: Path, args, row: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    _row_file(folder, args).write_text(json.dumps(row, indent=2) + "\n")


def _pil(array):
    from PIL import Image

    return Image.fromarray(array, mode="L")


def _record_seconds(folder: Path, seconds: float) -> None:
    (folder / "benchmark_adapt_seconds.txt").write_text(f"{seconds:.1f}\n")


def _recorded_seconds(folder: Path) -> float:
    path = folder / "benchmark_adapt_seconds.txt"
    return float(path.read_text()) if path.exists() else float("nan")


def write_report(args, rows: list[dict], indices, n_reference: int) -> None:
    """Markdown table (ratios against plain fine-tuning from this same run) plus the raw JSON."""
    plain = next((r for r in rows if r["method"] == "plain"), None)
    lines = [
        f"# Few-shot benchmark: {fmnist.CLASS_NAMES[args.target_class]} (class {args.target_class}), "
        f"{args.shots} shots, seed {args.seed}, {args.steps} steps",
        "",
        f"Proxy metrics on the Fashion-MNIST classifier (not comparable with published FID/LPIPS). "
        f"{args.samples} samples per method ({args.scheduler}, {args.sample_steps} steps); "
        f"proxy-FID/KID against {n_reference} images of the class (train + test); proxy Intra-LPIPS "
        f"against the shots (train indices {list(map(int, indices))}). For scale: proxy-FID between "
        f"the train and test sneakers is about 1, between sneakers and ankle boots about 1,050.",
        f"Settings: {json.dumps(_settings(args, rows))}",
        "",
        "| method | l_img, l_hf, l_hfmse | proxy-FID | proxy-KID | proxy Intra-LPIPS "
        "| Intra-LPIPS / plain | FID / plain | empty/singleton clusters | adapt s | sample s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio_i = f"{r['proxy_intra_lpips'] / plain['proxy_intra_lpips']:.2f}" if plain else "-"
        ratio_f = f"{r['proxy_fid'] / plain['proxy_fid']:.2f}" if plain else "-"
        w = r.get("settings", {})
        weights = ", ".join(f"{w[k]:g}" for k in ("l_img", "l_hf", "l_hfmse")) if w else "-"
        lines.append(f"| {r['label']} | {weights} | {r['proxy_fid']:.2f} | {r['proxy_kid']:.2f} | "
                     f"{r['proxy_intra_lpips']:.4f} | {ratio_i} | {ratio_f} | {r['proxy_sparse_clusters']} | "
                     f"{r['adapt_seconds']} | {r['sample_seconds']} |")
    lines += ["", "Grids: " + ", ".join(f"[{r['method']}]({r['grid']})" for r in rows), ""]
    name = run_name(args)
    (args.out / f"{name}.md").write_text("\n".join(lines))
    (args.out / f"{name}.json").write_text(json.dumps({"settings": _settings(args, rows), "rows": rows}, indent=2) + "\n")
    print("\n".join(lines))


SETTING_KEYS = ("steps", "batch_size", "learning_rate", "ema_decay", "ds_max_timestep",
                "num_similarity_samples", "pairwise_max_timestep", "l_img", "l_hf", "l_hfmse")


def _run_settings(folder: Path) -> dict:
    """The resolved settings the core saved for a run (its config.json)."""
    saved = json.loads((folder / "config.json").read_text())
    return {k: saved.get(k) for k in SETTING_KEYS}


def _settings(args, rows: list[dict]) -> dict:
    """What all methods share (taken from a finished run) plus the sampling settings."""
    adapted = [r for r in rows if "settings" in r]
    shared = {k: v for k, v in adapted[0]["settings"].items() if k not in ("l_img", "l_hf", "l_hfmse")} if adapted else {}
    return {"base_model": args.base_model, **shared, "samples": args.samples,
            "sampler": f"{args.scheduler} {args.sample_steps} steps", "seed": args.seed}


def main(argv=None) -> int:
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
