"""Japanese and English: every page in Japanese shows no stray English, the catalog is
complete, the language switcher beats Accept-Language, numbers, dates and sizes follow
the language, and API errors come back translated."""
from __future__ import annotations

import datetime as dt
import re
import sys
from pathlib import Path

import pytest

from app import i18n
from app.errors import BadInput, Message, message_of, set_error, set_warnings
from page_crawl import crawled_site, parse
from web_helpers import sign_up

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import translations  # noqa: E402  (scripts/translations.py)

# Words that stay in Latin letters on a Japanese page: the product's name, file formats,
# units and the names of techniques as Japanese product pages write them.
ALLOWED = {
    "domainstudio", "zip", "jpeg", "png", "webp", "csv", "json", "lora", "px", "b", "kb", "mb", "gb", "tb", "gpu",
    "cpu", "ema", "mse", "adamw", "unet", "vae", "ddpm", "fp", "bf", "fashion", "mnist", "stable", "diffusion", "clip",
    "dino", "id", "api", "url", "cuda", "diffusers", "lpips", "intra", "utc", "sdpa",
}
# text a user typed, ids and file names: not the interface's words
DATA_PATTERNS = [
    r"\b[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12}\b",  # ids
    r"\b[0-9a-f]{8}\b",  # short ids
    r"[\w.-]+\.(?:png|jpe?g|webp|zip|csv|json)\b",  # file names
    r"builtin:[\w-]+",  # base model names (the server's configuration)
    r"DOMAINSTUDIO_\w+",  # setting names of the server
    r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+",  # emails
    r"「[^」]*」",  # a value the user types or picks, quoted as Japanese does ("auto", a prompt)
    r"\b[A-Z]\w*(?:Error|Exception)\b",  # an exception's class name: a technical detail in a reason
]
SKIP_TAGS = {"script", "style", "code", "kbd", "samp"}  # code is code in any language
TEXT_ATTRS = ("title", "alt", "placeholder", "aria-label")


@pytest.fixture(scope="module")
def site_ja(local_pg_settings):
    with crawled_site(local_pg_settings, "ja") as pages:
        yield pages


def visible_text(html: str) -> list[str]:
    """The text a reader meets: text nodes outside script/style/code and outside elements
    marked as another language (the switcher's "English"), plus the text attributes."""
    out = []
    for el in parse(html).iter():
        if el.tag in SKIP_TAGS or any(a.tag in SKIP_TAGS for a in el.ancestors()):
            continue
        langs = [el.attrs["lang"]] if "lang" in el.attrs else []
        langs += [a.attrs["lang"] for a in el.ancestors() if "lang" in a.attrs]
        if langs and langs[0] != "ja":
            continue
        out.extend(c for c in el.children if isinstance(c, str) and c.strip())
        out.extend(el.attrs[a] for a in TEXT_ATTRS if el.attrs.get(a))
        if el.tag == "input" and el.attrs.get("type") in ("submit", "button", "reset") and el.attrs.get("value"):
            out.append(el.attrs["value"])
    return out


def english_words(text: str, user_data: list[str]) -> set[str]:
    for value in user_data:
        text = text.replace(value, " ")
    for pattern in DATA_PATTERNS:
        text = re.sub(pattern, " ", text)
    # whole words only: "1e-4" or "32x32" are numbers
    words = re.findall(r"(?<![\w.])[A-Za-z]+(?:['’-][A-Za-z]+)*(?!\w)", text)
    return {w for w in words if len(w) > 1 and not all(part in ALLOWED for part in w.lower().split("-"))}


def test_every_page_in_japanese_has_no_english_left(site_ja):
    assert len(site_ja.pages) >= 10, sorted(site_ja.pages)
    leftovers = {}
    for url, html in site_ja.pages.items():
        assert '<html lang="ja">' in html, url
        words = set()
        for text in visible_text(html):
            words |= english_words(text, site_ja.user_data)
        if words:
            leftovers[url] = sorted(words)
    assert not leftovers, f"English words on Japanese pages (translate them, or allow a term): {leftovers}"


def test_the_empty_states_say_what_to_do_next(site_ja):
    assert "写真セットはまだありません" in site_ja.pages["(empty) /"]
    assert "写真はまだありません" in site_ja.pages["(empty) photo set"]
    assert "この条件に合う画像はありません" in site_ja.pages["(empty) gallery filter"]
    # the form error is beside its field, tied to it for screen readers
    signup = parse(site_ja.pages["(form error) /signup"])
    email = next(e for e in signup.iter() if e.tag == "input" and e.attrs.get("name") == "email")
    assert email.attrs.get("aria-invalid") == "true"
    error = next(e for e in signup.iter() if e.attrs.get("id") == email.attrs["aria-describedby"])
    assert "メールアドレス" in error.text()
    home = parse(site_ja.pages["(form error) /"])
    name = next(e for e in home.iter() if e.tag == "input" and e.attrs.get("name") == "name")
    error = next(e for e in home.iter() if e.attrs.get("id") == name.attrs["aria-describedby"])
    assert error.text() == "名前を入力してください" and name.attrs.get("aria-invalid") == "true"
    assert next(e for e in home.iter() if e.attrs.get("name") == "class_word").attrs["value"] == "bottle"  # kept


# ------------------------------------------------------------------------------ catalog
PLACEHOLDER = re.compile(r"%\((\w+)\)[sd]")


def test_every_message_has_a_japanese_translation_with_the_same_placeholders():
    missing = translations.missing("ja")
    assert not missing, f"untranslated in locales/ja (run scripts/translations.py update, then translate): {missing}"
    catalog = translations.read_catalog("ja")
    wrong = []
    for message in catalog:
        if not message.id:
            continue
        ids = message.id if isinstance(message.id, tuple) else (message.id,)
        strings = message.string if isinstance(message.string, tuple) else (message.string,)
        wanted = set().union(*(PLACEHOLDER.findall(m) for m in ids)) - ({"num"} if len(ids) > 1 else set())
        for s in strings:
            got = set(PLACEHOLDER.findall(s)) - ({"num"} if len(ids) > 1 else set())
            if got != wanted or s.count("%") - s.count("%%") * 2 != len(PLACEHOLDER.findall(s)):
                wrong.append((ids[0], s))
    assert not wrong, f"placeholders differ between msgid and translation: {wrong}"


def test_a_missing_compiled_catalog_is_compiled_from_the_po(tmp_path, monkeypatch):
    po = ROOT / "locales" / "ja" / "LC_MESSAGES" / "messages.po"
    (tmp_path / "ja" / "LC_MESSAGES").mkdir(parents=True)
    (tmp_path / "ja" / "LC_MESSAGES" / "messages.po").write_bytes(po.read_bytes())
    monkeypatch.setattr(i18n, "LOCALES_DIR", tmp_path)
    i18n.translations.cache_clear()
    try:
        assert i18n.t("ja", "Photo sets") == "写真セット"
    finally:
        i18n.translations.cache_clear()


# --------------------------------------------------------------------- choosing the language
def test_accept_language_picks_the_best_supported_language():
    assert i18n.from_accept_language("ja-JP,ja;q=0.9,en-US;q=0.8") == "ja"
    assert i18n.from_accept_language("fr-FR, en;q=0.5, ja;q=0.7") == "ja"
    assert i18n.from_accept_language("de, fr") is None
    assert i18n.pick_locale({}, "de") == "en"
    assert i18n.pick_locale({i18n.COOKIE: "en"}, "ja") == "en"
    assert i18n.pick_locale({i18n.COOKIE: "xx"}, "ja") == "ja"


def test_the_switcher_cookie_beats_accept_language(make_client, local_pg_settings):
    client = make_client(local_pg_settings)
    ja = {"Accept-Language": "ja,en;q=0.5"}
    page = client.get("/login", headers=ja)
    assert '<html lang="ja">' in page.text and "ログイン" in page.text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    # before sign-in too: the choice is a cookie, and the answer goes back to the page
    r = client.post("/language", data={"lang": "en", "next": "/login", "csrf_token": token}, headers=ja,
                    follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert i18n.COOKIE in r.headers["set-cookie"] and "Max-Age" in r.headers["set-cookie"]
    page = client.get("/login", headers=ja)
    assert '<html lang="en">' in page.text and "Sign in" in page.text and "ログイン" not in page.text
    # and the API answers in the chosen language as well
    sign_up(client)
    r = client.post("/api/photo-sets", json={"name": "", "class_word": "bottle"}, headers=ja)
    assert r.json()["detail"] == "name is required"
    # off-site "next" values are ignored
    r = client.post("/language", data={"lang": "ja", "next": "//evil.example", "csrf_token": token},
                    follow_redirects=False)
    assert r.headers["location"] == "/"
    assert client.post("/language", data={"lang": "tlh", "csrf_token": token}).status_code == 400


def test_api_errors_come_back_in_japanese_and_english_stays_the_same(make_client, local_pg_settings):
    client = make_client(local_pg_settings)
    sign_up(client)
    r = client.post("/api/photo-sets", json={"name": "", "class_word": "bottle"}, headers={"Accept-Language": "ja"})
    assert r.status_code == 400 and r.json()["detail"] == "名前を入力してください"
    r = client.post("/api/photo-sets", json={"name": "", "class_word": "bottle"})
    assert r.json() == {"detail": "name is required", "field": "name", "fields": {"name": "name is required"}}
    # an empty form: every field's problem at once, in the API and beside each field of the page
    r = client.post("/api/photo-sets", json={"name": "", "class_word": ""}, headers={"Accept-Language": "ja"})
    assert r.json()["fields"] == {"name": "名前を入力してください", "class_word": r.json()["fields"]["class_word"]}
    assert r.json()["fields"]["class_word"] != r.json()["fields"]["name"]
    token = client.headers["X-CSRF-Token"]
    page = client.post("/photo-sets", data={"name": "", "class_word": "", "csrf_token": token}).text
    assert page.count('aria-invalid="true"') == 2 and "class word is required" in page
    ps = client.post("/api/photo-sets", json={"name": "Mugs", "class_word": "mug"}).json()["id"]
    r = client.post(f"/api/photo-sets/{ps}/runs", json={"preset": "quick"}, headers={"Accept-Language": "ja"})
    assert r.status_code == 400 and "10" in r.json()["detail"] and "写真" in r.json()["detail"], r.json()
    # a refused upload: the reason of each file in Japanese too
    r = client.post(f"/api/photo-sets/{ps}/photos", files=[("files", ("empty.png", b"", "image/png"))],
                    headers={"Accept-Language": "ja"})
    assert r.status_code == 422
    assert r.json()["refused"] == [{"file": "empty.png", "reason": "ファイルが空です"}]
    assert "empty.png: ファイルが空です" in r.json()["detail"]


def test_error_messages_translate_their_params():
    exc = BadInput("a gallery holds at most %(max)s images", params={"max": 1000})
    assert exc.message == "a gallery holds at most 1000 images"
    assert i18n.error_message("ja", exc) == "ギャラリーの画像は最大 1000 枚です"
    assert i18n.error_message("en", exc) == exc.message


# --------------------------------------------------------------------------- formatting
def test_numbers_dates_and_sizes_follow_the_language():
    assert i18n.format_number(1234567.5, "en") == "1,234,567.5"
    assert i18n.format_number(1234567.5, "ja") == "1,234,567.5"
    assert i18n.format_number(0.5, "en", digits=2) == "0.50"
    assert i18n.format_size(512, "en") == "512 B"
    assert i18n.format_size(1300000, "en") == "1.2 MB"
    assert i18n.format_size(5 * 1024**3, "ja") == "5.0 GB"
    assert i18n.format_size(None, "en") == "–"
    when = dt.datetime(2026, 11, 27, 14, 5, tzinfo=dt.timezone.utc)
    assert i18n.format_when(when, "en") == "Nov 27, 2026, 2:05\u202fPM UTC"
    assert i18n.format_when(when, "ja") == "2026/11/27 14:05 UTC"
    assert i18n.format_day(when, "ja", "long") == "2026年11月27日"
    # a naive timestamp (SQLite) is read as UTC
    assert i18n.format_when(when.replace(tzinfo=None), "ja") == "2026/11/27 14:05 UTC"
    assert i18n.iso_utc(when.replace(tzinfo=None)) == "2026-11-27T14:05:00Z"


def test_templates_format_with_the_page_language():
    from app.routes.pages import templates

    t = templates.env.from_string('{{ n|number }} {{ b|filesize }} {{ d|datetime }} '
                                  '{{ ngettext("%(num)s photo", "%(num)s photos", 3) }} {{ _("Photo sets") }}')
    d = dt.datetime(2026, 1, 2, 3, 4, tzinfo=dt.timezone.utc)
    assert t.render(locale="en", n=12345, b=2048, d=d) == "12,345 2.0 KB Jan 2, 2026, 3:04\u202fAM UTC 3 photos Photo sets"
    assert t.render(locale="ja", n=12345, b=2048, d=d) == "12,345 2.0 KB 2026/01/02 3:04 UTC 3 枚の写真 写真セット"
    # |when: the same text in a <time> element that app.js shows in the reader's time zone
    assert templates.env.from_string("{{ d|when }}").render(locale="ja", d=d) == (
        '<time datetime="2026-01-02T03:04:00Z" data-local="medium">2026/01/02 3:04 UTC</time>')


def test_a_stored_failure_is_shown_in_the_readers_language():
    """The worker stores a failure as English text plus msgid and params; each reader sees
    it in their language, older rows (text only) as they were written."""
    class Row:
        error = error_detail = None

    row = Row()
    set_error(row, Message("the object store failed: %(detail)s", {"detail": "timeout"}))
    assert row.error == "the object store failed: timeout"
    assert row.error_detail == {"msgid": "the object store failed: %(detail)s", "params": {"detail": "timeout"}}
    ja = i18n.stored_error("ja", row)
    assert ja == i18n.t("ja", "the object store failed: %(detail)s", detail="timeout")
    assert ja != row.error and "timeout" in ja
    assert i18n.stored_error(None, row) == i18n.stored_error("en", row) == row.error

    old = Row()
    old.error = "written before error details were kept"
    assert i18n.stored_error("ja", old) == old.error

    set_error(row, None)
    assert row.error is None and row.error_detail is None and i18n.stored_error("ja", row) is None

    # training diverged: a NaN loss is stored as text (Postgres' JSON refuses NaN)
    set_error(row, Message("training diverged at step %(step)s (loss %(loss)s)", {"step": 3, "loss": float("nan")}))
    assert row.error_detail["params"] == {"step": 3, "loss": "nan"} and row.error.endswith("(loss nan)")


def test_core_errors_keep_their_msgid_and_params():
    from worker.domainstudio.errors import InputError

    exc = InputError("steps must be between %(low)s and %(high)s, got %(value)s", low=1, high=10, value=0)
    message = message_of(exc)
    assert (message.msgid, message.params) == (exc.msgid, {"low": 1, "high": 10, "value": 0})
    assert message.render() == str(exc) == "steps must be between 1 and 10, got 0"
    other = message_of(RuntimeError("disk full"))  # not a core error: its English text
    assert other.render() == "disk full" and other.params == {}


def test_a_runs_warnings_are_shown_in_the_readers_language():
    from worker.domainstudio.errors import Notice

    class Run:
        warnings = warning_details = None

    run = Run()
    msgid = "skipped %(name)s: not a readable image (%(error)s)"
    set_warnings(run, [Notice(msgid, name="a.png", error="OSError"), "a warning without a msgid"])
    assert run.warnings == ["skipped a.png: not a readable image (OSError)", "a warning without a msgid"]
    ja = i18n.stored_warnings("ja", run)
    assert ja[0] == i18n.t("ja", msgid, name="a.png", error="OSError") and "a.png" in ja[0] and ja[0] != run.warnings[0]
    assert ja[1] == "a warning without a msgid"
    assert i18n.stored_warnings(None, run) == run.warnings
