"""The domainstudio command end to end, in separate processes, on the tiny models."""
import json
import subprocess
import sys

from worker.domainstudio.config import AdaptConfig


def run(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "worker.domainstudio.cli", *args],
                          capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_help_documents_every_adapt_setting():
    text = run("adapt", "--help").stdout
    for f in AdaptConfig.fields_help():
        assert "--" + f["name"].replace("_", "-") in text
    for command in ("adapt", "sample", "info", "models"):
        assert command in run("--help").stdout


def test_adapt_resume_info_and_sample_end_to_end(photos, tmp_path):
    out = tmp_path / "run"
    common = ["--base-model", "builtin:tiny-ddpm", "--preview-every", "2", "--num-previews", "2",
              "--batch-size", "2"]
    first = run("adapt", str(photos), "-o", str(out), "--steps", "2", *common)
    assert "adapted model" in first.stdout
    assert "adapting: 100%" in first.stderr  # the progress bar
    from PIL import Image
    assert Image.open(out / "previews" / "step-000002.png").size == (64, 32)
    second = run("adapt", str(photos), "-o", str(out), "--steps", "3", *common)
    assert "resumed at step 2" in second.stdout
    info = json.loads(run("info", str(out), "--json").stdout)
    assert info["type"] == "checkpoint" and info["steps"] == 3 and info["mode"] == "full"
    run("sample", str(out), "-o", str(tmp_path / "images"), "-n", "3", "--steps", "2", "--seed", "4")
    lines = [json.loads(x) for x in (tmp_path / "images" / "metadata.jsonl").read_text().splitlines()]
    assert [x["seed"] for x in lines] == [4, 5, 6]
    assert all((tmp_path / "images" / x["file"]).is_file() for x in lines)


def test_text_to_image_lora_through_the_cli(photos, tmp_path):
    out = tmp_path / "run"
    run("adapt", str(photos), "-o", str(out), "--base-model", "builtin:tiny-sd", "--steps", "1",
        "--num-class-images", "2", "--class-word", "bottle", "--preview-every", "0")
    assert (out / "lora.safetensors").is_file()
    run("sample", str(out), "-o", str(tmp_path / "images"), "-n", "1", "--steps", "2",
        "--prompt", "a photo of sks bottle")
    assert (tmp_path / "images" / "image-000000.png").is_file()


def test_errors_name_the_fix_and_leave_nothing_behind(tmp_path):
    proc = run("adapt", str(tmp_path / "missing"), "-o", str(tmp_path / "out"), "--base-model",
               "builtin:tiny-ddpm", check=False)
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    assert not (tmp_path / "out").exists()
    proc = run("sample", "builtin:unknown", "-o", str(tmp_path / "images"), check=False)
    assert proc.returncode == 2 and "available: builtin:tiny-ddpm" in proc.stderr
    assert not (tmp_path / "images").exists()
    proc = run("adapt", str(tmp_path), "-o", str(tmp_path / "o"), "--base-model", "x", "--steps", "-3", check=False)
    assert proc.returncode == 2 and "steps must be between" in proc.stderr
