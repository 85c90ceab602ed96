"""The whole flow in headless Chromium, as a person does it, on the real app (uvicorn) and
real services with the builtin tiny model: sign up, create a photo set, upload 10 photos
with the file picker, start a run, watch its progress reach 100%, open the gallery, review
in the large view with the keyboard, build a pack on the page, download it and check the
ZIP. Then the main pages again in Japanese, and at 420 px and 2560 px wide. Every page is
saved as a full-page screenshot under tests/e2e/output/<test name>/."""
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

from .e2e_helpers import PageProblems, Screenshots, product_photos

pytestmark = pytest.mark.slow

# enough steps that training lasts several of the run page's 1 s updates, so the page shows
# progress between 0 and 100% (measured: 100 steps of the tiny model with the DomainStudio
# terms take 30 s on a busy 2-core machine)
RUN_STEPS = 100
APPROVE, REJECT = "a", "r"
# the pack's sizes (the builder's checkboxes) and what each image of that size must be
PACK_SIZES = {"1024": lambda w, h: max(w, h) == 1024, "4x5": lambda w, h: abs(w / h - 0.8) < 0.05}
TIMEOUT_MS = 120_000


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
        run_path = start_run(page, shots)
        watch_progress(page, shots)
        report_path = open_run_report(page, shots)
        gallery_path = open_gallery(page, shots)
        reviews = review_with_keyboard(page, shots)
        zip_path = build_and_download_pack(page, shots, gallery_path, output_dir)
        check_pack_zip(page, zip_path, gallery_path, reviews)
        bulk_reject_a_shift_click_range(page, shots, gallery_path)

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
    page.get_by_label(re.compile("^Team name")).fill("Bottle team")
    page.get_by_role("button", name="Create account", exact=True).click()
    expect(page).to_have_url(re.compile(r"/$"))
    shots.take(page, "home-empty")


def create_photo_set(page, shots: Screenshots) -> str:
    page.get_by_label("Name", exact=True).fill("Summer bottle launch")
    page.get_by_label("Class word").fill("bottle")
    page.get_by_role("button", name="Create photo set", exact=True).click()
    expect(page).to_have_url(re.compile(r"/photo-sets/[0-9a-f-]{36}$"))
    expect(page.get_by_role("heading", level=1)).to_contain_text("Summer bottle launch")
    shots.take(page, "photo-set-empty")
    return _path(page)


def upload_photos(page, shots: Screenshots, output_dir) -> None:
    """The file picker, as a person uses it: choose 10 files, press Upload; the page
    uploads them one by one and reloads with the photos."""
    photos = product_photos(output_dir / "photos")
    page.locator('input[type="file"]').set_input_files([str(p) for p in photos])
    with page.expect_navigation(timeout=TIMEOUT_MS):  # the page reloads when all are in
        page.get_by_role("button", name="Upload", exact=True).click()
    expect(page.locator('img[src^="/photos/"]')).to_have_count(len(photos))
    shots.take(page, "photo-set-10-photos")


def start_run(page, shots: Screenshots) -> str:
    """The Quick preset with a few expert overrides that keep the tiny run short."""
    page.locator("details").filter(has=page.locator('[name="x_steps"]')).locator("summary").click()
    for name, value in {"x_steps": RUN_STEPS, "x_batch_size": 2, "x_preview_every": RUN_STEPS // 3,
                        "x_num_previews": 2, "x_checkpoint_every": RUN_STEPS}.items():
        page.locator(f'[name="{name}"]').fill(str(value))
    page.locator('[name="gallery_size"]').fill("8")
    shots.take(page, "run-form")
    page.get_by_role("button", name="Start run", exact=True).click()
    expect(page).to_have_url(re.compile(r"/runs/[0-9a-f-]{36}$"))
    return _path(page)


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
    seen, deadline, mid_shot = set(), time.monotonic() + TIMEOUT_MS / 1000, False
    while time.monotonic() < deadline:
        value = _progress(page)
        if value is not None:
            seen.add(round(value, 3))
            if 0.2 < value < 0.9 and not mid_shot:
                shots.take(page, "run-in-progress")
                mid_shot = True
            if value >= 1:
                break
        time.sleep(0.1)
    assert max(seen, default=0) >= 1, f"the progress bar never reached 100%; it showed {sorted(seen)}"
    assert any(0 < v < 1 for v in seen), f"the progress bar did not move live; it showed {sorted(seen)}"
    expect(page.locator("#run-status")).to_contain_text(re.compile("succeeded", re.I), timeout=TIMEOUT_MS)
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
    # the page reloads itself while the images are generated
    expect(page.locator('img[src^="/images/"]')).to_have_count(8, timeout=TIMEOUT_MS)
    expect(page.locator("#gallery-status")).to_contain_text(re.compile("succeeded", re.I), timeout=TIMEOUT_MS)
    shots.take(page, "gallery")
    return _path(page)


IMAGE_URL = re.compile(r"/images/([0-9a-f-]{36})")


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
    expect(download_link).to_be_visible(timeout=TIMEOUT_MS)  # the page follows the build
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
    assert {r["base_model"] for r in rows} == {"builtin:tiny-ddpm"}


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
