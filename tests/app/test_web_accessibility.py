"""Accessibility over every rendered page: the page's language, a skip link, a name for
every form control, button, link and image, headings in order, references that point
somewhere; and text colours with at least 4.5:1 contrast in the stylesheets."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from page_crawl import crawled_site, parse

STATIC = Path(__file__).resolve().parents[2] / "static"
CONTROLS = {"input", "select", "textarea"}
NO_NAME_NEEDED = {"hidden", "submit", "button", "reset", "image"}


@pytest.fixture(scope="module")
def site(local_pg_settings):
    with crawled_site(local_pg_settings, "en") as pages:
        yield pages


def _name(el, labels_for: set[str]) -> str:
    """The accessible name, as far as these pages build it."""
    if el.attrs.get("aria-label") or el.attrs.get("aria-labelledby") or el.attrs.get("title"):
        return el.attrs.get("aria-label") or el.attrs.get("aria-labelledby") or el.attrs["title"]
    if el.tag in CONTROLS:
        if el.attrs.get("id") in labels_for or any(a.tag == "label" for a in el.ancestors()):
            return "label"
        return ""
    text = el.text().strip()
    images = [i.attrs.get("alt", "") for i in el.iter() if i.tag == "img"]
    return text or " ".join(images).strip()


def problems_of(html: str) -> list[str]:
    root = parse(html)
    elements = list(root.iter())
    out = []
    html_el = next(e for e in elements if e.tag == "html")
    if not html_el.attrs.get("lang"):
        out.append("<html> has no lang")
    ids = [e.attrs["id"] for e in elements if e.attrs.get("id")]
    out += [f"duplicate id {i!r}" for i in sorted({i for i in ids if ids.count(i) > 1})]
    links = [e for e in elements if e.tag == "a"]
    if not links or links[0].attrs.get("href") != "#main" or "main" not in ids:
        out.append("the first link is not a skip link to #main")
    labels_for = {e.attrs["for"] for e in elements if e.tag == "label" and e.attrs.get("for")}
    out += [f"label for missing id {f!r}" for f in sorted(labels_for - set(ids))]
    for e in elements:
        for attr in ("aria-describedby", "aria-labelledby", "aria-controls"):
            out += [f"{attr} points to missing id {ref!r}" for ref in e.attrs.get(attr, "").split() if ref not in ids]
        if e.tag in CONTROLS and e.attrs.get("type", "text") not in NO_NAME_NEEDED and not _name(e, labels_for):
            out.append(f"<{e.tag} name={e.attrs.get('name')!r}> has no label")
        if e.tag == "img" and "alt" not in e.attrs:
            out.append(f"<img src={e.attrs.get('src')!r}> has no alt")
        if e.tag == "button" and not _name(e, labels_for):
            out.append(f"<button> without a name: {e.attrs}")
        if e.tag == "a" and e.attrs.get("href") and not _name(e, labels_for):
            out.append(f"<a href={e.attrs['href']!r}> without a name")
    headings = [int(e.tag[1]) for e in elements if re.fullmatch(r"h[1-6]", e.tag)]
    if headings.count(1) != 1:
        out.append(f"{headings.count(1)} <h1> (one per page)")
    for before, after in zip(headings, headings[1:]):
        if after > before + 1:
            out.append(f"heading levels skip from h{before} to h{after}")
    return out


def test_every_page_names_its_controls_images_and_headings(site):
    assert len(site.pages) >= 10, sorted(site.pages)
    found = {url: p for url, html in site.pages.items() if (p := problems_of(html))}
    assert not found, found


def test_changing_status_is_announced(site):
    """Flashes, the upload list and the run's status and stage are live regions; a form
    error is an alert."""
    photo_set = next(html for url, html in site.pages.items() if url.startswith("/photo-sets/"))
    assert 'id="upload-list" class="upload-list" aria-live="polite"' in photo_set
    assert 'role="alert"' in site.pages["(form error) /signup"]
    run = next(html for url, html in site.pages.items() if re.fullmatch(r"/runs/[\w-]+", url))
    assert re.search(r'id="run-status" aria-live="polite"', run) and re.search(r'id="run-stage" aria-live="polite"', run)


# ------------------------------------------------------------------------------ contrast
def _luminance(hex_colour: str) -> float:
    h = hex_colour.lstrip("#")
    h = "".join(c * 2 for c in h) if len(h) == 3 else h
    channels = [int(h[i:i + 2], 16) / 255 for i in (0, 2, 4)]
    lin = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def contrast(a: str, b: str) -> float:
    hi, lo = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def test_contrast_formula_matches_wcag():
    assert round(contrast("#000", "#fff"), 1) == 21.0
    assert round(contrast("#767676", "#fff"), 2) == 4.54


def _variables(css: str) -> dict[str, str]:
    return dict(re.findall(r"(--[\w-]+)\s*:\s*(#[0-9a-fA-F]{3,6})\b", css))


def _colour(value: str, variables: dict[str, str]) -> str | None:
    value = value.strip()
    if value.startswith("var("):
        value = variables.get(value[4:].split(")")[0].split(",")[0].strip(), "")
    if value in ("#fff", "white"):
        return "#fff"
    m = re.fullmatch(r"#[0-9a-fA-F]{3}|#[0-9a-fA-F]{6}", value)
    return m.group(0) if m else None


def rule_pairs(css: str, variables: dict[str, str]):
    """(selector, text colour, background) of each rule that sets both."""
    for selector, body in re.findall(r"([^{}]+)\{([^{}]*)\}", re.sub(r"/\*.*?\*/", "", css, flags=re.S)):
        props = dict((k.strip(), v.strip()) for k, _, v in (p.partition(":") for p in body.split(";")) if v)
        fg = _colour(props.get("color", ""), variables)
        bg = _colour((props.get("background-color") or props.get("background") or "").split()[0]
                     if (props.get("background-color") or props.get("background")) else "", variables)
        if fg and bg:
            yield selector.strip(), fg, bg


def test_text_colours_have_enough_contrast():
    app_css = (STATIC / "app.css").read_text()
    variables = _variables(app_css)
    low = []
    # the base text colours on the page and card backgrounds, and the header
    base = [("--fg", "--bg"), ("--fg", "--card"), ("--muted", "--bg"), ("--muted", "--card"), ("--accent", "--bg"),
            ("--accent", "--card"), ("--bad", "--card"), ("--ok", "--card"), ("--header-muted", "--header")]
    for fg, bg in base:
        if contrast(variables[fg], variables[bg]) < 4.5:
            low.append((fg, bg, round(contrast(variables[fg], variables[bg]), 2)))
    # every rule that sets a text colour and a background, in every stylesheet
    for sheet in sorted(STATIC.glob("*.css")):
        css = sheet.read_text()
        for selector, fg, bg in rule_pairs(css, {**variables, **_variables(css)}):
            if contrast(fg, bg) < 4.5:
                low.append((sheet.name, selector, fg, bg, round(contrast(fg, bg), 2)))
    assert not low, f"text colours under 4.5:1: {low}"


def test_focus_is_visible_and_the_layout_adapts():
    css = (STATIC / "app.css").read_text()
    assert ":focus-visible" in css and "outline: 3px" in css
    assert ".skip-link:focus" in css
    assert "max-width: var(--page-max)" in css and re.search(r"@media \(max-width: 5\d\dpx\)", css)
