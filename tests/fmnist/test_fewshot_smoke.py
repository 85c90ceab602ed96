"""The few-shot benchmark end to end on a tiny random model: a few shots, steps and samples."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("fewshot", ROOT / "benchmarks" / "fewshot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fewshot_benchmark_smoke(tmp_path):
    fewshot = _load_benchmark()
    argv = ["--base-model", "builtin:tiny-ddpm", "--target-class", "9", "--shots", "3", "--seed", "1",
            "--steps", "2", "--samples", "6", "--sample-steps", "2", "--max-reference", "50",
            "--methods", "plain,domainstudio", "--ds-max-timestep", "1000",
            "--work-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "results")]
    rows = fewshot.run(fewshot.parse_args(argv))
    assert [r["method"] for r in rows] == ["source", "plain", "domainstudio"]
    assert rows[1]["settings"]["l_img"] == 0 and rows[2]["settings"]["l_img"] > 0
    assert all(r["settings"]["steps"] == 2 for r in rows[1:])
    name = "fewshot-c9-k3-s1-2"
    table = (tmp_path / "results" / f"{name}.md").read_text()
    assert "proxy-FID" in table and "DomainStudio (all terms)" in table and "Ankle boot" in table
    data = json.loads((tmp_path / "results" / f"{name}.json").read_text())
    assert len(data["rows"]) == 3 and all(r["proxy_fid"] >= 0 for r in data["rows"])
    for method in ("source", "plain", "domainstudio", "shots"):
        assert (tmp_path / "results" / f"{name}-{method}.png").exists()
    # A rerun reuses the finished adaptations instead of training again.
    again = fewshot.run(fewshot.parse_args(argv))
    assert [r["proxy_fid"] for r in again] == [r["proxy_fid"] for r in rows]
