"""The whole flow in headless Chromium, as a person does it, on the real app (uvicorn) and
real services with the text-to-image demo model (the embedded default's first model): sign
up, create a photo set of sneakers, upload 10 photos with the file picker, see the prompts
the run will use, start a run, watch its progress and prompt previews reach 100%, open the
gallery of the run's prompts, review in the large view with the keyboard, build a pack on
the page, download it and check the ZIP. Then the main pages again in Japanese, and at
420 px and 2560 px wide. Every page is saved as a full-page screenshot under
tests/e2e/output/<test name>/."""
from __future__ import annotations

import csv
import io
import re
import time
import uuid
import zipfile

import pytest
from PIL import Image
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import expect

from .e2e_helpers import PageProblems, Screenshots, sneaker_photos

pytestmark = pytest.mark.slow

# enough steps that training lasts several of the run page's 1 s updates, so the page shows
# progress between 0 and 100% (a LoRA step of the demo model with the DomainStudio terms
# takes about 0.3 s on one core)
RUN_STEPS = 60
MODEL = "builtin:fmnist-sd-32"
# what the demo model's prompts say for the photo set's class word "sneaker" (its word: shoe)
PROMPTS = ["a photo of sks shoe", "a product photo of sks shoe", "sks shoe"]
APPROVE, REJECT = "a", "r"
# the pack's sizes (the builder's checkboxes) and what each image of that size must be
PACK_SIZES = {"1024": lambda w, h: max(w, h) == 1024, "4x5": lambda w, h: abs(w / h - 0.8) < 0.05}
# Waits on the worker end only when progress stalls: the allowed silence comes from the step
# rate the test measures (issue 15: a fixed 120 s expired at 80% and 99% under CPU load)
STALL_FACTOR = 10  # silence allowed: this many times the longest gap between two advances seen
STALL_FLOOR_S = 20.0  # ... and never less (the page's own updates come every 1-2 s)
FIRST_PROGRESS_S = 300.0  # loading the model before the first step: no rate measured yet
TIMEOUT_MS = 30_000  # a page answering or reloading (no worker work in between)


class Progress:
    """Waits while a value advances: fails only when it stands still for longer than
    STALL_FACTOR times the longest gap between advances measured so far."""

    def __init__(self, what: str, first_limit: float = FIRST_PROGRESS_S):
        self.what, self.first_limit = what, first_limit
        self.last_value, self.last_change, self.longest_gap = None, time.monotonic(), None

    def allowed(self) -> float:
        if self.longest_gap is None:
            return self.first_limit
        return max(STALL_FLOOR_S, STALL_FACTOR * self.longest_gap)

    def wait(self, read, done) -> object:
        """Calls read() until done(value); returns the last value."""
        while True:
            value = read()
            now = time.monotonic()
            if value is not None and value != self.last_value:
                if self.last_value is not None:
                    gap = now - self.last_change
                    self.longest_gap = gap if self.longest_gap is None else max(self.longest_gap, gap)
                self.last_value, self.last_change = value, now
            if value is not None and done(value):
                return value
            if now - self.last_change > self.allowed():
                raise AssertionError(f"{self.what} stalled at {self.last_value!r} for {now - self.last_change:.0f} s "
                                     f"(allowed {self.allowed():.0f} s from the measured rate)")
            time.sleep(0.1)


def test_whole_flow_in_the_browser(browser, app_server, output_dir):
    problems = PageProblems()
    shots = Screenshots(output_dir, problems)
    context = browser.new_context(base_url=app_server.url, locale="en-US", viewport={"width": 1280, "height": 900},
                                  accept_downloads=True)
    context.set_default_timeout(30_000)
    page = context.new_page()
    problems.watch(page)

    try:
        sign_up(page, shots)
        photo_set_path = create_photo_set(page, shots)
        upload_photos(page, shots, output_dir)
        run_form_prompts(page, shots)
        run_path = start_run(page, shots)
        second_run_waits_in_the_queue(context, photo_set_path, shots)
        watch_progress(page, shots)
        expert_details_toggle(page, shots)
        report_path = open_run_report(page, shots)
        gallery_path = open_gallery(page, shots)
        preset_estimate_after_a_run(page, photo_set_path, shots)
        page.goto(gallery_path)
        reviews = review_with_keyboard(page, shots)
        zip_path = build_and_download_pack(page, shots, gallery_path, output_dir)
        check_pack_zip(page, zip_path, gallery_path, reviews)
        bulk_reject_a_shift_click_range(page, shots, gallery_path)
        selection_bar_leaves_generate_more_free(page)

        api_docs_offline(page, shots)

        image_path = "/images/" + next(iter(reviews))
        signed_in = dict(base_url=app_server.url, storage_state=context.storage_state())
        japanese_pass(browser, signed_in, shots, problems,
                      ["/", photo_set_path, run_path, report_path, gallery_path, image_path])
        width_pass(browser, signed_in, shots, problems, ["/", run_path, report_path, gallery_path, image_path])
    except Exception as exc:
        exc.add_note(f"what the pages showed: {', '.join(_failure_screenshots(browser, output_dir))}\n"
                     f"the end of uvicorn's log:\n{app_server.log_tail()}")
        raise
    finally:
        context.close()
    assert not problems.problems, ("problems in the browser:\n" + "\n".join(problems.problems)
                                   + "\nthe end of uvicorn's log:\n" + app_server.log_tail())


def _failure_screenshots(browser, output_dir) -> list[str]:
    """A screenshot of every open page (the failing step may be in any of the contexts)."""
    paths = []
    for n, page in enumerate(p for context in browser.contexts for p in context.pages):
        path = output_dir / f"failure-{n + 1}.png"
        try:
            page.screenshot(path=str(path), full_page=True)
            paths.append(f"{path} ({page.url})")
        except PlaywrightError as exc:
            paths.append(f"(no screenshot of {page.url}: {exc.message})")
    return paths


# ------------------------------------------------------------------------------ the steps
def sign_up(page, shots: Screenshots) -> None:
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/login$"))  # signed out: the app asks to sign in
    shots.take(page, "login")
    page.get_by_role("link", name="Create an account").click()
    shots.take(page, "signup")
    page.get_by_label("Email").fill(f"e2e-{uuid.uuid4().hex[:8]}@example.com")
    page.get_by_label(re.compile("^Password")).fill("correct horse battery staple")
    page.get_by_label(re.compile("^Team name")).fill("Sneaker team")
    page.get_by_role("button", name="Create account", exact=True).click()
    expect(page).to_have_url(re.compile(r"/$"))
    shots.take(page, "home-empty")


def create_photo_set(page, shots: Screenshots) -> str:
    page.get_by_label("Name", exact=True).fill("Summer sneaker launch")
    page.get_by_label("Class word").fill("sneaker")
    page.get_by_role("button", name="Create photo set", exact=True).click()
    expect(page).to_have_url(re.compile(r"/photo-sets/[0-9a-f-]{36}$"))
    expect(page.get_by_role("heading", level=1)).to_contain_text("Summer sneaker launch")
    shots.take(page, "photo-set-empty")
    return _path(page)


def upload_photos(page, shots: Screenshots, output_dir) -> None:
    """The file picker, as a person uses it: choosing 10 files uploads them (no button to
    press); the page reloads with the photos, in the order chosen."""
    photos = sneaker_photos(output_dir / "photos")
    with page.expect_navigation(timeout=120_000):  # the page reloads when all are in
        page.locator('input[type="file"]').set_input_files([str(p) for p in photos])
    expect(page.locator('img[src^="/photos/"]')).to_have_count(len(photos))
    assert page.locator('#photo-grid img').evaluate_all("els => els.map(e => e.alt)") == [p.name for p in photos]
    shots.take(page, "photo-set-10-photos")


def start_run(page, shots: Screenshots) -> str:
    """The Quick preset with a few expert overrides that keep the run short."""
    page.locator("details").filter(has=page.locator('[name="x_steps"]')).locator("summary").click()
    for name, value in {"x_steps": RUN_STEPS, "x_batch_size": 2, "x_preview_every": RUN_STEPS // 3,
                        "x_num_previews": 2, "x_checkpoint_every": RUN_STEPS, "x_num_class_images": 8}.items():
        page.locator(f'[name="{name}"]').fill(str(value))
    page.locator('[name="gallery_size"]').fill("8")
    shots.take(page, "run-form")
    page.get_by_role("button", name="Start run", exact=True).click()
    expect(page).to_have_url(re.compile(r"/runs/[0-9a-f-]{36}$"))
    return _path(page)


def run_form_prompts(page, shots: Screenshots) -> None:
    """The run form shows, before any run starts, the prompts a run of the text-to-image demo
    model will use, in its own word for "sneaker", and what the demo model can draw; the
    unconditional demo model has no prompts. No estimate yet: nothing ran."""
    prompts = page.locator(".run-prompts:visible")
    expect(page.locator('.preset-estimate:visible').first).to_contain_text("once a run of this model has finished")
    expect(page.locator("#run-base-model")).to_have_value(MODEL)
    # the trained prompt, then the gallery's prompts in turn, each quoted (<q>)
    expect(prompts.locator("q")).to_have_text([PROMPTS[0], *PROMPTS])
    expect(page.locator(".demo-model-note:visible")).to_contain_text("never seen a sneaker")
    expect(page.locator(".colour-notice")).to_have_count(0)  # grey photos: nothing to warn about
    shots.take(page, "run-form-prompts")
    page.locator("#run-base-model").select_option("builtin:fmnist-ddpm-32")
    expect(prompts).to_have_count(0)
    expect(page.locator(".demo-model-note:visible")).to_contain_text("32×32 grayscale")
    page.locator("#run-base-model").select_option(MODEL)
    expect(prompts).to_have_count(1)


def second_run_waits_in_the_queue(context, photo_set_path: str, shots: Screenshots) -> None:
    """A second run started while the first trains shows its place in the queue and the
    first run ahead of it; then it is canceled (a queued run stops at once)."""
    page = context.new_page()
    page.goto(photo_set_path)
    page.locator("details").filter(has=page.locator('[name="x_steps"]')).locator("summary").click()
    page.locator('[name="x_steps"]').fill("2")
    page.locator('[name="gallery_size"]').fill("1")
    page.get_by_role("button", name="Start run", exact=True).click()
    expect(page).to_have_url(re.compile(r"/runs/[0-9a-f-]{36}$"))
    spot = page.locator("#queue-spot")
    expect(spot).to_contain_text("Number 2 in the queue")
    expect(spot.locator(".queue-ahead")).to_contain_text("Run of Summer sneaker launch")
    shots.take(page, "run-queued-second")
    page.get_by_role("button", name="Cancel run", exact=True).click()
    expect(page.locator("#run-status")).to_contain_text(re.compile("canceled", re.I))
    page.close()


def expert_details_toggle(page, shots: Screenshots) -> None:
    """The loss charts are behind "Expert details", closed at first; opening shows them."""
    charts = page.locator("#loss-charts")
    expect(charts).to_be_hidden()
    page.locator("#expert-details summary").click()
    expect(charts).to_be_visible()
    expect(charts.locator("svg").first).to_be_visible()
    shots.take(page, "run-expert-details")


def preset_estimate_after_a_run(page, photo_set_path: str, shots: Screenshots) -> None:
    """Once a run of the model has finished here, each preset shows its time on this machine."""
    page.goto(photo_set_path)
    estimate = page.locator(".preset-estimate:visible")
    expect(estimate).to_have_count(3)
    expect(estimate.first).to_contain_text(re.compile(r"about \d+:\d\d:\d\d on this machine"))
    shots.take(page, "run-form-with-estimates")


def api_docs_offline(page, shots: Screenshots) -> None:
    """/docs and /redoc render from the app's own files (the browser here has no internet)."""
    page.goto("/docs")
    expect(page.locator(".swagger-ui .opblock").first).to_be_visible()
    shots.take(page, "api-docs")
    page.goto("/redoc")
    expect(page.locator("h1").first).to_contain_text("DomainStudio")


def _progress(page) -> float | None:
    """The run page's progress bar as a fraction (a <progress> or an ARIA progressbar)."""
    try:
        return page.get_by_role("progressbar").first.evaluate(
            """el => el.tagName === 'PROGRESS' ? el.value / el.max
                 : Number(el.getAttribute('aria-valuenow')) / Number(el.getAttribute('aria-valuemax') || 100)""",
            timeout=2_000)
    except PlaywrightError:  # between two pages (the page reloads when the run ends)
        return None


def watch_progress(page, shots: Screenshots) -> None:
    """Watches the live progress bar until it is full and the run has succeeded; on the
    way it must have shown a value between 0 and 100% without a reload."""
    seen, mid_shot = set(), False

    def read():
        nonlocal mid_shot
        value = _progress(page)
        if value is not None:
            seen.add(round(value, 3))
            if 0.2 < value < 0.9 and not mid_shot:
                shots.take(page, "run-in-progress")
                mid_shot = True
        return value

    Progress("the run's progress bar").wait(read, lambda v: v >= 1)
    assert any(0 < v < 1 for v in seen), f"the progress bar did not move live; it showed {sorted(seen)}"
    expect(page.locator("#run-status")).to_contain_text(re.compile("succeeded", re.I), timeout=TIMEOUT_MS)
    # previews come from the instance prompt; the run says which word the model used for "sneaker"
    expect(page.locator("#preview-prompt q")).to_have_text(PROMPTS[0])
    expect(page.locator("#run-previews img")).to_have_count(2)
    expect(page.locator("body")).to_contain_text("its own word 'shoe'")
    shots.take(page, "run-succeeded")


def open_run_report(page, shots: Screenshots) -> str:
    """The run report, linked from the finished run's page; then back to the run."""
    page.locator('a[href$="/report"]').first.click()
    expect(page).to_have_url(re.compile(r"/runs/[0-9a-f-]{36}/report$"))
    shots.take(page, "run-report")
    path = _path(page)
    page.go_back()
    return path


def open_gallery(page, shots: Screenshots) -> str:
    gallery_link = page.locator('a[href^="/galleries/"]').first
    expect(gallery_link).to_be_visible(timeout=TIMEOUT_MS)  # the run page reloads with it
    gallery_link.click()
    expect(page).to_have_url(re.compile(r"/galleries/[0-9a-f-]{36}$"))
    # the page reloads itself while the images are generated: waits while their number grows
    images = page.locator('img[src^="/images/"]')
    Progress("the gallery's images").wait(lambda: _count(images), lambda n: n >= 8)
    expect(images).to_have_count(8)
    expect(page.locator("#gallery-status")).to_contain_text(re.compile("succeeded", re.I), timeout=TIMEOUT_MS)
    for prompt in PROMPTS:  # the gallery cycles the demo model's prompts with the trigger word
        expect(page.locator("main")).to_contain_text(f"“{prompt}”")
    shots.take(page, "gallery")
    return _path(page)


IMAGE_URL = re.compile(r"/images/([0-9a-f-]{36})")


def _count(locator) -> int | None:
    try:
        return locator.count()
    except PlaywrightError:  # between two pages (the page reloads itself)
        return None


def _image_id(page) -> str:
    return IMAGE_URL.search(page.url).group(1)


def _review_label(page):
    return page.locator("#image-view .review-label")


def _press_and_move(page, key: str) -> str:
    """Presses a key in the large view and waits for the next image; returns its id."""
    before = _image_id(page)
    page.keyboard.press(key)
    try:
        page.wait_for_url(lambda url: IMAGE_URL.search(url) is not None and IMAGE_URL.search(url).group(1) != before)
    except PlaywrightError:
        raise AssertionError(f"pressing {key} on image {before} did not move on: still at {page.url}") from None
    return _image_id(page)


def review_with_keyboard(page, shots: Screenshots) -> dict[str, str]:
    """Opens the first image in the large view and reviews with the keyboard: A approves
    and moves on, R rejects and moves on, the arrows move without reviewing. Then walks
    back with the left arrow, checking each image shows the review it got. Returns
    {image id: review} of the reviewed images."""
    page.locator('a[href^="/images/"]').first.click()
    expect(page).to_have_url(IMAGE_URL)
    shots.take(page, "large-view")
    plan = [(APPROVE, "approved"), (REJECT, "rejected"), ("ArrowRight", "new"), (APPROVE, "approved"),
            (APPROVE, "approved")]
    visited: list[tuple[str, str]] = []
    for key, review in plan:
        visited.append((_image_id(page), review))
        _press_and_move(page, key)
    shots.take(page, "large-view-after-reviews")
    for image_id, review in reversed(visited):
        assert _press_and_move(page, "ArrowLeft") == image_id
        expect(_review_label(page)).to_have_text(re.compile(f"^{review}$", re.I))
    return {image_id: review for image_id, review in visited if review != "new"}


def build_and_download_pack(page, shots: Screenshots, gallery_url: str, output_dir):
    """The pack builder on the gallery page: the approved images as JPEG in two sizes (1024
    px on the long side, and portrait 4:5); waits for the pack, then downloads it as the
    browser does."""
    page.goto(gallery_url)
    expect(page.locator('[data-count="approved"]').first).to_have_text("3")
    expect(page.locator('[data-count="rejected"]').first).to_have_text("1")
    builder = page.locator("#pack-builder")
    builder.locator('input[name="selection"][value="approved"]').check()
    builder.locator('select[name="format"]').select_option("jpeg")
    for size in ("original", "1024", "4x5"):
        builder.locator(f'input[name="size"][value="{size}"]').set_checked(size in PACK_SIZES)
    expect(builder.locator("#pack-estimate")).to_contain_text(re.compile(r"\d"))  # the size estimate
    shots.take(page, "gallery-reviewed-pack-options")
    builder.get_by_role("button", name="Build pack", exact=True).click()
    download_link = page.locator('a[href^="/packs/"][href$="/download"]')
    bar = page.locator(".pack-progress")  # the page follows the build: waits while it advances

    def built() -> float | None:
        if _count(download_link):
            return 2.0
        try:
            return float(bar.first.get_attribute("value", timeout=1_000) or 0) if _count(bar) else None
        except PlaywrightError:
            return None

    Progress("the pack's build").wait(built, lambda v: v == 2.0)
    expect(download_link).to_be_visible()
    shots.take(page, "pack-ready")
    with page.expect_download() as download:
        download_link.click()
    path = output_dir / download.value.suggested_filename
    download.value.save_as(path)
    assert zipfile.is_zipfile(path), path
    return path


def bulk_reject_a_shift_click_range(page, shots: Screenshots, gallery_url: str) -> None:
    """Bulk review on the grid: click the 6th image's checkbox, shift-click the 8th (the
    three the keyboard pass left new), reject them with one click; the counts and the
    marks change in place and survive a reload."""
    page.goto(gallery_url)
    picks = page.locator("#image-grid input.pick")
    expect(picks).to_have_count(8)
    picks.nth(5).click()
    picks.nth(7).click(modifiers=["Shift"])
    assert [picks.nth(i).is_checked() for i in range(8)] == [False] * 5 + [True] * 3
    expect(page.locator("#selected-count")).to_contain_text("3")
    shots.take(page, "gallery-shift-click-range")
    page.get_by_role("button", name="Reject selected", exact=True).click()
    expect(page.locator('[data-count="rejected"]').first).to_have_text("4")
    expect(page.locator("#image-grid li.review-rejected")).to_have_count(4)
    page.reload()
    expect(page.locator('[data-count="rejected"]').first).to_have_text("4")
    expect(page.locator('[data-count="new"]').first).to_have_text("1")


def selection_bar_leaves_generate_more_free(page) -> None:
    """Scrolled to "Generate more", the sticky selection bar does not cover its heading."""
    heading = page.get_by_role("heading", name="Generate more", exact=True)
    heading.evaluate("el => el.scrollIntoView({block: 'start'})")
    bar, head = page.locator("#bulk-bar").bounding_box(), heading.bounding_box()
    assert bar["y"] + bar["height"] <= head["y"] or bar["y"] >= head["y"] + head["height"], (bar, head)


def check_pack_zip(page, zip_path, gallery_url: str, reviews: dict[str, str]) -> None:
    """The ZIP holds the approved images in each chosen size (a folder per size), JPEG,
    and a manifest naming each file with its seed."""
    gallery = page.request.get("/api" + gallery_url).json()
    seeds = {i["id"]: i["seed"] for i in gallery["images"]}
    approved = sorted(seeds[i] for i, r in reviews.items() if r == "approved")
    assert len(approved) == 3
    with zipfile.ZipFile(zip_path) as zf:
        names = zf.namelist()
        assert "manifest.csv" in names, names
        images = [n for n in names if n != "manifest.csv"]
        assert sorted(n.split("/")[0] for n in images) == sorted(list(PACK_SIZES) * len(approved)), names
        for name in images:
            with Image.open(io.BytesIO(zf.read(name))) as img:
                assert img.format == "JPEG" and name.endswith(".jpg"), (name, img.format)
                assert PACK_SIZES[name.split("/")[0]](*img.size), (name, img.size)
        rows = list(csv.DictReader(io.StringIO(zf.read("manifest.csv").decode())))
    assert sorted(r["file"] for r in rows) == sorted(images)
    assert sorted(int(r["seed"]) for r in rows) == sorted(approved * len(PACK_SIZES))
    assert {r["base_model"] for r in rows} == {MODEL}
    assert {r["prompt"] for r in rows} <= set(PROMPTS), rows
    assert {r["review"] for r in rows} == {"approved"}
    for row in rows:  # the pixel size of each file, as written
        with zipfile.ZipFile(zip_path) as zf, Image.open(io.BytesIO(zf.read(row["file"]))) as img:
            assert (int(row["width"]), int(row["height"])) == img.size, row


# ---------------------------------------------------------------- languages and widths
def japanese_pass(browser, signed_in: dict, shots: Screenshots, problems: PageProblems, paths: list[str]) -> None:
    """The main pages for a browser that asks for Japanese (Accept-Language), signed in
    as the same user; then the language switcher changes the language back to English."""
    ja = browser.new_context(**signed_in, locale="ja-JP", viewport={"width": 1280, "height": 900})
    page = ja.new_page()
    problems.watch(page)
    for path in paths:
        page.goto(path)
        expect(page.locator("html")).to_have_attribute("lang", "ja")
        shots.take(page, "ja-" + _page_name(path))
    with page.expect_navigation():
        page.locator("#lang-select").select_option("en")  # the switcher submits itself
    expect(page.locator("html")).to_have_attribute("lang", "en")
    assert _path(page) == paths[-1], "the switcher should come back to the same page"
    ja.close()


def width_pass(browser, signed_in: dict, shots: Screenshots, problems: PageProblems, paths: list[str]) -> None:
    """Pages on a phone (420 px) and a large screen (2560 px): none may scroll sideways."""
    for width in (420, 2560):
        wide = browser.new_context(**signed_in, locale="en-US", viewport={"width": width, "height": 900})
        page = wide.new_page()
        problems.watch(page)
        for path in paths:
            page.goto(path)
            name = _page_name(path)
            shots.take(page, f"{name}-{width}px")
            problems.check_width(page, f"{name} at {width}px")
        wide.close()


def _path(page) -> str:
    """The page's address without the scheme and host."""
    return "/" + page.url.split("/", 3)[3]


def _page_name(path: str) -> str:
    """A screenshot's name for a page: its path without ids ("runs-report", "home")."""
    parts = [part for part in path.strip("/").split("/") if not re.fullmatch(r"[0-9a-f-]{36}", part)]
    return "-".join(parts) or "home"
