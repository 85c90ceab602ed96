"""The text-to-image few-shot benchmark over seeds: one table per step budget, with the mean
of the seeds and the issue's goal checked on it (DomainStudio LoRA (c) against DreamBooth
LoRA with prior preservation (b)).

    python benchmarks/fewshot_t2i_summary.py [--results benchmarks/results]

Reads the ``fewshot-t2i-k10-s<seed>-<steps>.json`` files that ``fewshot_t2i.py`` writes
(untagged runs only) and prints markdown.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAME = re.compile(r"fewshot-t2i-k10-s(\d+)-(\d+)\.json$")
ORDER = ("source", "dreambooth", "dreambooth-prior", "domainstudio", "official", "full")


def load(results: Path) -> dict[int, dict[int, dict[str, dict]]]:
    """{steps: {seed: {method: row}}}"""
    out: dict = defaultdict(dict)
    for path in sorted(results.glob("fewshot-t2i-k10-s*-*.json")):
        m = NAME.search(path.name)
        if m:
            rows = json.loads(path.read_text())["rows"]
            out[int(m.group(2))][int(m.group(1))] = {r["method"]: r for r in rows}
    return out


def _shoe(row: dict) -> float:
    return row["prior"]["a photo of a shoe"]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def table(steps: int, by_seed: dict[int, dict[str, dict]]) -> list[str]:
    seeds = sorted(by_seed)
    lines = [f"**{steps} steps** (seeds {', '.join(map(str, seeds))}; proxy-FID / proxy Intra-LPIPS / sneaker share / "
             "\"a photo of a shoe\" drawn as sandal or ankle boot; the unadapted model: 98%)", "",
             "| method | " + " | ".join(f"seed {s}" for s in seeds) + " | mean FID | mean Intra-LPIPS |",
             "|---|" + "---|" * len(seeds) + "---:|---:|"]
    for method in ORDER:
        rows = [by_seed[s].get(method) for s in seeds]
        if method == "source" or not any(rows):
            continue
        cells = [f"{r['proxy_fid']:.0f} / {r['proxy_intra_lpips']:.3f} / {r['sneaker']:.0%} / {_shoe(r):.0%}" if r else "-"
                 for r in rows]
        done = [r for r in rows if r]
        mean = (f"{_mean([r['proxy_fid'] for r in done]):.1f} | {_mean([r['proxy_intra_lpips'] for r in done]):.3f}"
                if len(done) == len(rows) else "- | -")
        lines.append(f"| {done[0]['label']} | " + " | ".join(cells) + f" | {mean} |")
    return lines + [""] + goal(by_seed, seeds)


def goal(by_seed: dict[int, dict[str, dict]], seeds: list[int]) -> list[str]:
    pairs = [(by_seed[s].get("domainstudio"), by_seed[s].get("dreambooth-prior"), by_seed[s].get("source")) for s in seeds]
    if not all(c and b and src for c, b, src in pairs):
        return ["(goal not checked: (b), (c) or the unadapted row missing for a seed)", ""]
    lpips = _mean([c["proxy_intra_lpips"] for c, _, _ in pairs]) / _mean([b["proxy_intra_lpips"] for _, b, _ in pairs])
    fid = _mean([c["proxy_fid"] for c, _, _ in pairs]) / _mean([b["proxy_fid"] for _, b, _ in pairs])
    copies = (_mean([c["copies"] for c, _, _ in pairs]), _mean([b["copies"] for _, b, _ in pairs]))
    drift = _mean([_shoe(src) - _shoe(c) for c, _, src in pairs])
    verdict = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    return [f"Goal on the mean of the seeds, (c) against (b): Intra-LPIPS {lpips:.2f}x (>= 1.2x: {verdict(lpips >= 1.2)}); "
            f"proxy-FID {fid:.2f}x (<= 1.05x: {verdict(fid <= 1.05)}); copies {copies[0]:.1%} against {copies[1]:.1%} "
            f"(lower: {verdict(copies[0] < copies[1])}); \"a photo of a shoe\" {drift * 100:.0f} points below the "
            f"unadapted model (within 5: {verdict(drift <= 0.05)}).", ""]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)
    data = load(args.results)
    if not data:
        print(f"no fewshot-t2i-k10-s*-*.json under {args.results}: run benchmarks/fewshot_t2i.py first", file=sys.stderr)
        return 2
    for steps in sorted(data):
        print("\n".join(table(steps, data[steps])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
