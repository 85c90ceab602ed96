"""The ``domainstudio`` command: adapt, sample, info, models (and pretrain for the demo model).

Every adaptation setting of :class:`AdaptConfig` is an option of ``adapt``, generated from
the dataclass so the CLI, the web form and the docs cannot drift apart.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

from .config import AdaptConfig, format_bound
from .errors import DomainStudioError

EPILOG = "Base models: builtin:fmnist-sd-32 (text-to-image demo), builtin:fmnist-ddpm-32 (unconditional demo), builtin:tiny-sd, builtin:tiny-sdxl, builtin:tiny-ddpm (tests), a local diffusers folder or a single .safetensors/.ckpt file (SD 1.x, 2.x, SDXL)."


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if not args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    _quiet_libraries(args.verbose)
    try:
        return args.func(args) or 0
    except DomainStudioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: training state up to the last completed step is in OUTPUT/state; "
              "run the same command again to resume", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="domainstudio", description=(
        "Few-shot adaptation of diffusion models with DomainStudio: turn 10-100 photos of a product "
        "into a model that draws new, diverse images of it."), epilog=EPILOG)
    parser.add_argument("-v", "--verbose", action="store_true", help="log each step and library messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _adapt_parser(sub)
    _sample_parser(sub)
    info = sub.add_parser("info", help="describe a checkpoint (run output folder) or a base model")
    info.add_argument("model", help="run output folder, diffusers folder, or builtin:NAME")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.set_defaults(func=cmd_info)
    models = sub.add_parser("models", help="list the builtin base models")
    models.set_defaults(func=cmd_models)
    try:
        from . import pretrain, pretrain_sd
    except ImportError:
        pretrain = pretrain_sd = None
    if pretrain is not None:
        pretrain.add_cli(sub)
        pretrain_sd.add_cli(sub)
    return parser


def _adapt_parser(sub) -> None:
    p = sub.add_parser("adapt", help="adapt a base model to a folder of photos",
                       description="Adapt a base model to 2-100 photos with DomainStudio. "
                                   "Re-running the same command resumes from the last saved state.",
                       epilog=EPILOG)
    p.add_argument("photos", type=Path, help="folder of photos (JPEG, PNG, WebP); bad files are skipped with a warning")
    p.add_argument("-o", "--output", type=Path, required=True, help="output folder for the adapted model")
    p.add_argument("--no-resume", action="store_true", help="refuse to continue a run found in the output folder")
    for f in AdaptConfig.fields_help():
        flag = "--" + f["name"].replace("_", "-")
        kwargs = {"dest": f["name"], "default": None, "help": f["help"]}
        if f["type"] == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = {"int": int, "float": float, "str": str}[f["type"]]
            if f["choices"]:
                kwargs["choices"] = f["choices"]
        if f["default"] is not None and f["type"] != "bool":
            kwargs["help"] += f" [default: {f['default']}]"
        if f["bound"] is not None:
            kwargs["help"] += f" [{_range(f['bound'])}]"
        if f["name"] == "base_model":
            kwargs["required"] = True
        p.add_argument(flag, **kwargs)
    p.set_defaults(func=cmd_adapt)


def _range(bound) -> str:
    """A setting's bounds as the help shows them: 1..4096, or 0<..<1 for open ends."""
    return (f"{format_bound(bound.low)}{'<' if bound.low_open else ''}.."
            f"{'<' if bound.high_open else ''}{format_bound(bound.high)}")


def _sample_parser(sub) -> None:
    from .config import DEFAULT_SAMPLING_STEPS as DEFAULT_STEPS
    from .config import SCHEDULERS

    p = sub.add_parser("sample", help="sample images from an adapted run or a base model")
    p.add_argument("model", help="run output folder, diffusers folder, or builtin:NAME")
    p.add_argument("-o", "--output", type=Path, required=True, help="folder for the PNGs and metadata.jsonl")
    p.add_argument("-n", "--n", type=int, default=8, help="number of images [default: 8]")
    p.add_argument("--prompt", help="prompt (text-to-image models); {token} and {class} are not expanded here")
    p.add_argument("--negative-prompt", help="negative prompt (text-to-image models)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first image; image i uses seed+i [default: 0]")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"sampling steps [default: {DEFAULT_STEPS}]")
    p.add_argument("--scheduler", choices=SCHEDULERS, default=None,
                   help="sampler [default: the model's own: dpmsolver++, sde-dpmsolver++ for builtin:fmnist-ddpm-32]")
    p.add_argument("--guidance-scale", type=float, default=7.5, help="classifier-free guidance [default: 7.5]")
    p.add_argument("--batch-size", type=int, default=8, help="images per batch [default: 8]")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto [default: auto]")
    p.add_argument("--precision", choices=("auto", "no", "fp16", "bf16"), default="auto",
                   help="weights' precision while sampling: auto = fp16 on a GPU, fp32 on the CPU [default: auto]")
    p.set_defaults(func=cmd_sample)


def cmd_adapt(args) -> int:
    from .adapt import adapt

    values = {f["name"]: getattr(args, f["name"]) for f in AdaptConfig.fields_help()
              if getattr(args, f["name"]) is not None}
    config = AdaptConfig.from_dict(values)
    bar = _ProgressBar(args.output / "previews")
    try:
        result = adapt(config, args.photos, args.output, progress=bar, resume=not args.no_resume)
    finally:
        bar.close()
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"adapted model: {result.output_dir} ({result.mode}, {result.steps} steps"
          + (f", resumed at step {result.resumed_from}" if result.resumed_from else "") + ")")
    return 0


class _ProgressBar:
    """tqdm bar with the loss terms and ETA; saves preview grids next to the run."""

    def __init__(self, previews: Path):
        self.bar = None
        self.stage = None
        self.previews = previews

    def __call__(self, event) -> None:
        from tqdm import tqdm

        if event.stage != self.stage:
            self.close()
            label = "class images" if event.stage == "class_images" else "adapting"
            self.bar = tqdm(total=event.total, initial=0, desc=label, unit="img" if event.stage == "class_images" else "step")
            self.stage = event.stage
        self.bar.n = event.step
        if event.losses:
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in event.losses.items()}, refresh=False)
        self.bar.refresh()
        if event.previews:
            self.previews.mkdir(parents=True, exist_ok=True)
            preview_grid(event.previews).save(self.previews / f"step-{event.step:06d}.png")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def preview_grid(images, columns: int = 4):
    """Paste preview images side by side, `columns` per row."""
    from PIL import Image

    w, h = images[0].size
    rows = (len(images) + columns - 1) // columns
    grid = Image.new(images[0].mode, (w * min(columns, len(images)), h * rows))
    for i, image in enumerate(images):
        grid.paste(image, ((i % columns) * w, (i // columns) * h))
    return grid


def cmd_sample(args) -> int:
    from .sampling import sample

    created = not args.output.exists()
    try:
        images = sample(args.model, args.n, prompt=args.prompt, seed=args.seed, steps=args.steps,
                        scheduler=args.scheduler, guidance_scale=args.guidance_scale,
                        batch_size=args.batch_size, device=args.device, negative_prompt=args.negative_prompt,
                        progress=_count_progress(args.n), precision=args.precision)
        _write_samples(images, args.output)
    except BaseException:
        if created and args.output.exists():
            shutil.rmtree(args.output, ignore_errors=True)
        raise
    print(f"{len(images)} images in {args.output}")
    return 0


def _count_progress(total: int):
    from tqdm import tqdm

    bar = tqdm(total=total, desc="sampling", unit="img")

    def update(done: int, _total: int) -> None:
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()
    return update


def _write_samples(images, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for g in images:
        name = f"image-{g.seed:06d}.png"
        g.image.save(folder / name)
        lines.append(json.dumps({"file": name, "seed": g.seed, "prompt": g.prompt, "steps": g.steps,
                                 "scheduler": g.scheduler, "model": g.model, **g.metadata}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")


def cmd_info(args) -> int:
    from .checkpoints import describe

    info = describe(args.model)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    for key, value in info.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for k, v in value.items():
                print(f"  {k}: {v}")
        else:
            print(f"{key}: {value}")
    return 0


def cmd_models(args) -> int:
    from .models import list_builtin_models

    for name, description in list_builtin_models().items():
        print(f"{name:28s} {description}")
    print("Or give a local diffusers folder (Stable Diffusion or DDPM layout).")
    return 0


def _quiet_libraries(verbose: bool) -> None:
    if verbose:
        return
    import warnings

    warnings.filterwarnings("ignore")
    for name in ("diffusers", "transformers", "peft"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from diffusers.utils import logging as dlog

        dlog.set_verbosity_error()
    except ImportError:
        pass


if __name__ == "__main__":
    sys.exit(main())
