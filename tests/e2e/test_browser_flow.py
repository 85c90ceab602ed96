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

# enough steps that the run lasts a few seconds, so the page shows progress between 0 and
# 100% (the tiny model trains hundreds of steps a second)
RUN_STEPS = 600
APPROVE, REJECT = "a", "r"
PACK_SIZE = 1024  # the "1024 px long side" option
TIMEOUT_MS = 120_000


def test_whole_flow_in_the_browser(browser, app_url, output_dir):
    shots, problems = Screenshots(output_dir), PageProblems()
    context = browser.new_context(base_url=app_url, locale="en-US", viewport={"width": 1280, "height": 900},
                                  accept_downloads=True)
    context.set_default_timeout(30_000)
    page = context.new_page()
    problems.watch(page)

    sign_up(page, shots)
    create_photo_set(page, shots)
    upload_photos(page, shots, output_dir)
    run_url = start_run(page, shots)
    watch_progress(page, shots)
    gallery_url = open_gallery(page, shots)
    reviews = review_with_keyboard(page, shots)
    zip_path = build_and_download_pack(page, shots, gallery_url, output_dir)
    check_pack_zip(page, zip_path, gallery_url, reviews)

    japanese_pass(browser, context, shots, problems, [run_url.replace(app_url, ""), gallery_url])
    width_pass(browser, context, shots, problems, gallery_url)
    context.close()
    assert not problems.problems, "problems in the browser:\n" + "\n".join(problems.problems)


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
    page.get_by_role("button", name="Create account").click()
    expect(page).to_have_url(re.compile(r"/$"))
    shots.take(page, "home-empty")


def create_photo_set(page, shots: Screenshots) -> None:
    page.get_by_label("Name", exact=True).fill("Summer bottle launch")
    page.get_by_label("Class word").fill("bottle")
    page.get_by_role("button", name="Create photo set").click()
    expect(page).to_have_url(re.compile(r"/photo-sets/[0-9a-f-]{36}$"))
    expect(page.get_by_role("heading", level=1)).to_contain_text("Summer bottle launch")
    shots.take(page, "photo-set-empty")


def upload_photos(page, shots: Screenshots, output_dir) -> None:
    """The file picker, as a person uses it: choose 10 files, press Upload; the page
    uploads them one by one and reloads with the photos."""
    photos = product_photos(output_dir / "photos")
    page.locator('input[type="file"]').set_input_files([str(p) for p in photos])
    with page.expect_navigation(timeout=TIMEOUT_MS):  # the page reloads when all are in
        page.get_by_role("button", name="Upload").click()
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
    page.get_by_role("button", name="Start run").click()
    expect(page).to_have_url(re.compile(r"/runs/[0-9a-f-]{36}$"))
    return page.url


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
    expect(page.locator("#run-status")).to_contain_text("succeeded", timeout=TIMEOUT_MS)
    shots.take(page, "run-succeeded")


def open_gallery(page, shots: Screenshots) -> str:
    gallery_link = page.locator('a[href^="/galleries/"]').first
    expect(gallery_link).to_be_visible(timeout=TIMEOUT_MS)  # the run page reloads with it
    gallery_link.click()
    expect(page).to_have_url(re.compile(r"/galleries/[0-9a-f-]{36}$"))
    # the page reloads itself while the images are generated
    expect(page.locator('img[src^="/images/"]')).to_have_count(8, timeout=TIMEOUT_MS)
    expect(page.locator("#gallery-status")).to_contain_text("succeeded", timeout=TIMEOUT_MS)
    shots.take(page, "gallery")
    return page.url.removeprefix(page.url.split("/galleries/")[0])


def _review_label(page):
    return page.locator(".review-label").first


def review_with_keyboard(page, shots: Screenshots) -> dict[str, str]:
    """Opens the first image in the large view and reviews four images with the keyboard:
    approve, next, reject, next, approve, next, approve, back (the approval stays).
    Returns {image id: review}."""
    page.locator('a[href^="/images/"]').first.click()
    expect(page).to_have_url(re.compile(r"/images/[0-9a-f-]{36}$"))
    shots.take(page, "large-view")
    reviews: dict[str, str] = {}
    for n, key in enumerate([APPROVE, REJECT, APPROVE, APPROVE]):
        if n:
            _press_and_move(page, "ArrowRight")
        page.keyboard.press(key)
        expected = "approved" if key == APPROVE else "rejected"
        expect(_review_label(page)).to_have_text(re.compile(expected, re.I))
        reviews[page.url.rsplit("/", 1)[1]] = expected
    shots.take(page, "large-view-reviewed")
    last = page.url
    _press_and_move(page, "ArrowLeft")
    expect(_review_label(page)).to_have_text(re.compile("approved", re.I))  # the third image kept its review
    assert page.url != last
    return reviews


def _press_and_move(page, key: str) -> None:
    before = page.url
    page.keyboard.press(key)
    page.wait_for_url(lambda url: url != before)


def build_and_download_pack(page, shots: Screenshots, gallery_url: str, output_dir):
    """The pack builder on the gallery page: the approved images as JPEG, 1024 px on the
    long side; waits for the pack, then downloads it as the browser does."""
    page.goto(gallery_url)
    expect(page.get_by_text(re.compile(r"Approved \(3\)"))).to_be_visible()
    pack_form = page.locator('form[action$="/packs"]')
    pack_form.locator('select[name="selection"]').select_option("approved")
    pack_form.locator('select[name="format"]').select_option("jpeg")
    pack_form.locator('select[name="size"]').select_option(str(PACK_SIZE))
    shots.take(page, "gallery-reviewed")
    pack_form.get_by_role("button", name="Build pack").click()
    download_link = page.locator('a[href^="/packs/"][href$="/download"]')
    expect(download_link).to_be_visible(timeout=TIMEOUT_MS)  # the page reloads while the pack is built
    shots.take(page, "pack-ready")
    with page.expect_download() as download:
        download_link.click()
    path = output_dir / download.value.suggested_filename
    download.value.save_as(path)
    assert path.suffix == ".zip", path
    return path


def check_pack_zip(page, zip_path, gallery_url: str, reviews: dict[str, str]) -> None:
    """The ZIP holds the approved images, JPEG and 1024 px on the long side, and a manifest
    naming each of them with its seed."""
    gallery = page.request.get("/api" + gallery_url).json()
    seeds = {i["id"]: i["seed"] for i in gallery["images"]}
    approved = sorted(seeds[i] for i, r in reviews.items() if r == "approved")
    with zipfile.ZipFile(zip_path) as zf:
        names = zf.namelist()
        images = [n for n in names if n.endswith(".jpg")]
        assert len(images) == len(approved) == 3 and "manifest.csv" in names, names
        for name in images:
            img = Image.open(io.BytesIO(zf.read(name)))
            assert img.format == "JPEG" and max(img.size) == PACK_SIZE, (name, img.format, img.size)
        rows = list(csv.DictReader(io.StringIO(zf.read("manifest.csv").decode())))
    assert [r["file"] for r in rows] == images
    assert sorted(int(r["seed"]) for r in rows) == approved
    assert {r["base_model"] for r in rows} == {"builtin:tiny-ddpm"}


# ---------------------------------------------------------------- languages and widths
def japanese_pass(browser, context, shots: Screenshots, problems: PageProblems, paths: list[str]) -> None:
    """The main pages for a browser that asks for Japanese (Accept-Language), signed in
    as the same user."""
    ja = browser.new_context(base_url=_base(context), locale="ja-JP", storage_state=context.storage_state(),
                             viewport={"width": 1280, "height": 900})
    page = ja.new_page()
    problems.watch(page)
    for path in ["/", *paths]:
        page.goto(path)
        assert page.locator("html").get_attribute("lang") == "ja", f"{path} is not in Japanese"
        shots.take(page, "ja-" + (path.strip("/").split("/")[0] or "home"))
    ja.close()


def width_pass(browser, context, shots: Screenshots, problems: PageProblems, gallery_url: str) -> None:
    """The gallery and the home page on a phone (420 px) and a large screen (2560 px)."""
    for width in (420, 2560):
        wide = browser.new_context(base_url=_base(context), locale="en-US", storage_state=context.storage_state(),
                                   viewport={"width": width, "height": 900})
        page = wide.new_page()
        problems.watch(page)
        for path, name in (("/", "home"), (gallery_url, "gallery")):
            page.goto(path)
            shots.take(page, f"{name}-{width}px")
            problems.check_width(page, f"{name} at {width}px")
        wide.close()


def _base(context) -> str:
    url = context.pages[0].url
    return url[: url.index("/", len("http://"))]
