"""Message catalogs: extract, update, compile (Babel's Python API, so the ServiceError
keywords need no long pybabel command line).

    python3 scripts/translations.py extract   # locales/messages.pot from babel.cfg
    python3 scripts/translations.py update    # extract, then merge into each locale's .po
    python3 scripts/translations.py compile   # each .po -> .mo (scripts/install runs this)
    python3 scripts/translations.py check     # fails if a msgid lacks a translation

Translators edit locales/<lang>/LC_MESSAGES/messages.po; the .mo files are build output.
"""
from __future__ import annotations

import io
import re
import sys
from pathlib import Path

from babel.messages.catalog import Catalog
from babel.messages.extract import DEFAULT_KEYWORDS, extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po, write_po

ROOT = Path(__file__).resolve().parent.parent
LOCALES = ROOT / "locales"
POT = LOCALES / "messages.pot"
# a service error's (and a Message's, and a core error's) first argument is its English msgid
# (app/errors.py, worker/domainstudio/errors.py)
ERROR_CLASSES = ("Message", "PhotoRejected", "ServiceError", "BadInput", "NotFound", "Conflict", "Unavailable", "TooManyRequests",
                 "Unprocessable",
                 # the core's and the copy guard's (worker/domainstudio/errors.py): msgid, then params
                 "DomainStudioError", "InputError", "ModelError", "Canceled", "CopyGuardError", "Notice")
TRANSLATION_KEYWORDS = {**DEFAULT_KEYWORDS, **{name: None for name in ERROR_CLASSES},
                        "t": (2,), "tn": (2, 3),  # app.i18n.t(lang, msgid), tn(lang, singular, plural, n)
                        "_f": (2,)}  # a core setting's help text: worker/domainstudio/config.py _f(default, help)


def extract() -> Catalog:
    """Every msgid in the sources babel.cfg names, with where it was found."""
    with (ROOT / "babel.cfg").open() as f:
        method_map, options_map = parse_mapping_cfg(f, filename=str(ROOT / "babel.cfg"))
    catalog = Catalog(project="DomainStudio", version="0.1.0", charset="utf-8")
    for filename, lineno, message, comments, context in extract_from_dir(
        str(ROOT), method_map, options_map, keywords=TRANSLATION_KEYWORDS, comment_tags=("TRANSLATORS:",),
        strip_comment_tags=True,
    ):
        catalog.add(message, None, [(filename, lineno)], auto_comments=comments, context=context)
    return catalog


def languages() -> list[str]:
    return sorted(p.name for p in LOCALES.iterdir() if (p / "LC_MESSAGES" / "messages.po").exists())


def read_catalog(lang: str) -> Catalog:
    with (LOCALES / lang / "LC_MESSAGES" / "messages.po").open("rb") as f:
        return read_po(f, locale=lang)


_DATED = re.compile(rb'^"POT-Creation-Date: .*\n', re.M)


def _write_if_changed(path: Path, catalog: Catalog, **options) -> None:
    """Writes a catalog unless only its creation date would change (no churn in git)."""
    buf = io.BytesIO()
    write_po(buf, catalog, width=100, **options)
    if path.exists() and _DATED.sub(b"", path.read_bytes()) == _DATED.sub(b"", buf.getvalue()):
        return
    path.write_bytes(buf.getvalue())


def write_pot(template: Catalog) -> None:
    _write_if_changed(POT, template, omit_header=False, sort_output=False)


def update() -> None:
    template = extract()
    write_pot(template)
    for lang in languages():
        catalog = read_catalog(lang)
        catalog.update(template, no_fuzzy_matching=True)
        catalog.last_translator = catalog.language_team = "DomainStudio maintainers"
        _write_if_changed(LOCALES / lang / "LC_MESSAGES" / "messages.po", catalog, ignore_obsolete=True)


def compile_all() -> None:
    for lang in languages():
        catalog = read_catalog(lang)
        with (LOCALES / lang / "LC_MESSAGES" / "messages.mo").open("wb") as f:
            write_mo(f, catalog)


def missing(lang: str) -> list[str]:
    """The msgids in the sources with no usable (non-empty, non-fuzzy) translation."""
    catalog = read_catalog(lang)
    out = []
    for message in extract():
        if not message.id:
            continue
        entry = catalog.get(message.id, context=message.context)
        strings = entry.string if entry is not None else None
        if entry is None or entry.fuzzy or not strings or (isinstance(strings, tuple) and not all(strings)):
            out.append(message.id if isinstance(message.id, str) else message.id[0])
    return out


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else ""
    if command == "extract":
        write_pot(extract())
    elif command == "update":
        update()
    elif command == "compile":
        compile_all()
    elif command == "check":
        bad = {lang: missing(lang) for lang in languages()}
        for lang, ids in bad.items():
            for msgid in ids:
                print(f"{lang}: untranslated: {msgid!r}")
        return 1 if any(bad.values()) else 0
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
