"""Languages: which one a request gets, its translations, and locale-aware formatting.

English is the source language (the msgids); Japanese comes from locales/ja. A request's
language is the ``domainstudio_lang`` cookie (set by the switcher in the page header,
so it works before sign-in) or else the best match in the browser's Accept-Language.

Templates use newstyle gettext (``{{ _("%(n)s images", n=count) }}``) and the filters
``|number``, ``|datetime``, ``|date``, ``|filesize`` and ``|when`` (a <time> element that
app.js shows in the reader's time zone); they read the language from the
template context (``locale``, set by ``render``) or from ``request.state.locale``.
"""
from __future__ import annotations

import datetime as dt
import gettext as stdgettext
import io
import logging
from functools import lru_cache
from pathlib import Path

from babel import Locale, UnknownLocaleError
from babel.dates import format_date, format_datetime
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.numbers import format_decimal, format_percent
from jinja2 import Environment, pass_context
from markupsafe import Markup
from jinja2.runtime import Context

from app.errors import N_, Message, render_value  # noqa: F401  (N_ for callers)

LOCALES_DIR = Path(__file__).resolve().parent.parent / "locales"
DEFAULT_LOCALE = "en"
# the languages offered, each named in itself for the switcher
LANGUAGES = {"en": "English", "ja": "日本語"}
COOKIE = "domainstudio_lang"
COOKIE_MAX_AGE = 365 * 24 * 3600

log = logging.getLogger("domainstudio.i18n")


# ------------------------------------------------------------------------ which language
def supported(code: str | None) -> str | None:
    """The supported language for a tag such as "ja", "ja-JP" or "en_US", or None."""
    if not code:
        return None
    base = code.strip().replace("_", "-").split("-")[0].lower()
    return base if base in LANGUAGES else None


def from_accept_language(header: str | None) -> str | None:
    """The best supported language in an Accept-Language header (RFC 9110 q-values)."""
    choices = []
    for i, part in enumerate((header or "").split(",")):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        for p in params.split(";"):
            name, _, value = p.strip().partition("=")
            if name.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        lang = supported(tag)
        if lang and q > 0:
            choices.append((-q, i, lang))  # highest q first; the header's order breaks ties
    return min(choices)[2] if choices else None


def pick_locale(cookies: dict[str, str], accept_language: str | None) -> str:
    return supported(cookies.get(COOKIE)) or from_accept_language(accept_language) or DEFAULT_LOCALE


def request_locale(request) -> str:
    """The language picked for this request (by the middleware in app.main)."""
    return getattr(request.state, "locale", None) or pick_locale(request.cookies, request.headers.get("accept-language"))


# --------------------------------------------------------------------------- catalogs
def _load_mo(lang: str) -> stdgettext.NullTranslations:
    """The compiled catalog; when only the .po is there (a checkout where scripts/install
    did not run) it is compiled in memory, so a missing .mo never means English pages."""
    folder = LOCALES_DIR / lang / "LC_MESSAGES"
    mo, po = folder / "messages.mo", folder / "messages.po"
    if mo.exists() and (not po.exists() or mo.stat().st_mtime >= po.stat().st_mtime):
        with mo.open("rb") as f:
            return stdgettext.GNUTranslations(f)
    if not po.exists():
        raise FileNotFoundError(f"no catalog for language {lang!r}: {po} is missing")
    with po.open("rb") as f:
        catalog = read_po(f, locale=lang)
    buf = io.BytesIO()
    write_mo(buf, catalog)  # fuzzy entries are left out, as pybabel compile does
    buf.seek(0)
    log.info("i18n.compiled_in_memory", extra={"lang": lang})
    return stdgettext.GNUTranslations(buf)


@lru_cache(maxsize=None)
def translations(lang: str) -> stdgettext.NullTranslations:
    if lang == DEFAULT_LOCALE:
        return stdgettext.NullTranslations()  # the msgids are the English text
    return _load_mo(lang)


# Python code translates with t() and tn(), named apart from gettext/ngettext because their
# first argument is the language (scripts/translations.py extracts their msgids).
def t(lang: str, msgid: str, **params) -> str:
    text = translations(lang).gettext(msgid)
    return text % params if params else text


def tn(lang: str, singular: str, plural: str, n: int, **params) -> str:
    """The plural form for ``n``; ``%(num)s`` in the msgids is ``n``."""
    text = translations(lang).ngettext(singular, plural, n)
    return text % {"num": n, **params}


def translate(lang: str, message) -> str:
    """A Message (app.errors) in ``lang``: the msgid translated, then filled with its params
    (themselves translated). Plain strings pass through as they are."""
    if not isinstance(message, Message):
        return str(render_value(message))
    try:
        return message.render(translations(lang).gettext)
    except (KeyError, ValueError, TypeError):  # a broken translation must not hide the message
        log.warning("i18n.bad_translation", extra={"msgid": message.msgid, "lang": lang})
        return message.render()


def translate_tree(lang: str, value):
    """JSON-ready data with every Message in it (in dicts and lists) translated."""
    if isinstance(value, Message):
        return translate(lang, value)
    if isinstance(value, dict):
        return {k: translate_tree(lang, v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [translate_tree(lang, v) for v in value]
    return value


def stored_error(lang: str | None, row) -> str | None:
    """The error of a run, gallery or pack in ``lang``: its stored msgid and params
    translated, else the English text as stored (rows written before error_detail
    existed). ``lang`` None gives the English text."""
    detail = getattr(row, "error_detail", None)
    if lang is None or not detail or not detail.get("msgid"):
        return row.error
    return translate(lang, Message(detail["msgid"], detail.get("params") or {}))


def stored_warnings(lang: str | None, run) -> list[str]:
    """A run's warnings in ``lang`` (as stored_error)."""
    details = getattr(run, "warning_details", None) or []
    texts = list(run.warnings or [])
    if lang is None or len(details) != len(texts):
        return texts
    return [translate(lang, Message(d["msgid"], d.get("params") or {})) if d and d.get("msgid") else text
            for d, text in zip(details, texts)]


def error_message(lang: str, exc) -> str:
    """A ServiceError's message in ``lang``."""
    return translate(lang, Message(exc.msgid, exc.params))


# ------------------------------------------------------------------------- formatting
def _babel_locale(lang: str) -> Locale:
    try:
        return Locale.parse(lang)
    except (UnknownLocaleError, ValueError):
        return Locale.parse(DEFAULT_LOCALE)


def format_number(value, lang: str, digits: int | None = None) -> str:
    if value is None:
        return "–"
    if digits is not None:
        pattern = "#,##0" + ("." + "0" * digits if digits else "")
        return format_decimal(value, format=pattern, locale=_babel_locale(lang))
    return format_decimal(value, locale=_babel_locale(lang))


def format_size(n: int | float | None, lang: str) -> str:
    """Bytes as "1.2 MB" (1024-based, one decimal above bytes) in the locale's digits."""
    if n is None:
        return "–"
    value, unit = float(n), "B"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            break
        value /= 1024
    pattern = "#,##0" if unit == "B" else "#,##0.0"
    return f"{format_decimal(value, format=pattern, locale=_babel_locale(lang))} {unit}"


def format_when(value: dt.datetime | None, lang: str, fmt: str = "medium") -> str:
    """A timestamp (stored in UTC) as the locale writes it, in UTC and saying so, e.g.
    "Nov 27, 2026, 2:33 PM UTC" or "2026/11/27 14:33 UTC" (app.js shows <time> elements
    in the reader's own time zone). ``fmt`` is a Babel width (short, medium, long) or a
    CLDR pattern."""
    if value is None:
        return "–"
    if fmt == "medium":  # the medium width with minutes only: seconds are noise in a table
        fmt = _medium_no_seconds(lang) + " z"
    return format_datetime(as_utc(value), format=fmt, tzinfo=dt.timezone.utc, locale=_babel_locale(lang))


def as_utc(value: dt.datetime) -> dt.datetime:
    """Timestamps are stored in UTC; SQLite gives them back without a zone."""
    return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(dt.timezone.utc)


def iso_utc(value: dt.datetime | None) -> str:
    """For <time datetime="...">: ISO 8601 in UTC."""
    return "" if value is None else as_utc(value).isoformat().replace("+00:00", "Z")


@lru_cache(maxsize=None)
def _medium_no_seconds(lang: str) -> str:
    loc = _babel_locale(lang)
    date_p = loc.date_formats["medium"].pattern
    time_p = loc.time_formats["short"].pattern
    return str(loc.datetime_formats["medium"]).replace("{1}", date_p).replace("{0}", time_p)


def format_day(value: dt.date | dt.datetime | None, lang: str, fmt: str = "medium") -> str:
    if value is None:
        return "–"
    return format_date(value, format=fmt, locale=_babel_locale(lang))


def format_share(value: float | None, lang: str) -> str:
    return "–" if value is None else format_percent(value, locale=_babel_locale(lang))


# ------------------------------------------------------------------------------ Jinja
def context_locale(context: Context) -> str:
    lang = context.get("locale")
    if lang:
        return lang
    request = context.get("request")
    return request_locale(request) if request is not None else DEFAULT_LOCALE


@pass_context
def _t_gettext(context: Context, msgid: str) -> str:
    return translations(context_locale(context)).gettext(msgid)


@pass_context
def _t_ngettext(context: Context, singular: str, plural: str, n: int) -> str:
    return translations(context_locale(context)).ngettext(singular, plural, n)


@pass_context
def _f_number(context: Context, value, digits: int | None = None) -> str:
    return format_number(value, context_locale(context), digits)


@pass_context
def _f_filesize(context: Context, value) -> str:
    return format_size(value, context_locale(context))


@pass_context
def _f_datetime(context: Context, value, fmt: str = "medium") -> str:
    return format_when(value, context_locale(context), fmt)


@pass_context
def _f_when(context: Context, value, fmt: str = "medium") -> Markup:
    """A <time> element: the locale's text in UTC, which app.js rewrites in the reader's
    time zone (the machine-readable value stays in the datetime attribute)."""
    if value is None:
        return Markup("–")
    return Markup('<time datetime="%s" data-local="%s">%s</time>') % (
        iso_utc(value), fmt, format_when(value, context_locale(context), fmt))


@pass_context
def _f_date(context: Context, value, fmt: str = "medium") -> str:
    return format_day(value, context_locale(context), fmt)


@pass_context
def _f_percent(context: Context, value) -> str:
    return format_share(value, context_locale(context))


@pass_context
def _f_failure(context: Context, row) -> str | None:
    return stored_error(context_locale(context), row)


@pass_context
def _f_warnings(context: Context, run) -> list[str]:
    return stored_warnings(context_locale(context), run)


def install(env: Environment) -> None:
    """Adds gettext (newstyle: ``_("%(n)s left", n=3)`` escapes and fills) and the
    locale-aware filters to a Jinja environment. The callables look up each render's
    language, so one shared environment serves every request."""
    env.add_extension("jinja2.ext.i18n")
    env.install_gettext_callables(_t_gettext, _t_ngettext, newstyle=True)
    env.filters.update(number=_f_number, filesize=_f_filesize, datetime=_f_datetime, date=_f_date,
                       percent=_f_percent, when=_f_when, failure=_f_failure,
                       warnings=_f_warnings)
    env.globals.update(LANGUAGES=LANGUAGES)
