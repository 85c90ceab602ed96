"""The password policy of sign-up (NIST SP 800-63B, 5.1.1.2): at least MIN_LENGTH
characters, and not one that a guesser tries first: a common password (the 30,000 most
common ones, from zxcvbn's list), one with digits or symbols stuck on its end
("password12"), one character or a short pattern repeated ("aaaaaaaaaa"), a run of the
alphabet, the digits or the keyboard, or a word of the account's email name or the service's name.
No rules on character classes (NIST advises against them)."""
from __future__ import annotations

import re
from functools import lru_cache

from app.errors import BadInput

MIN_LENGTH = 10
MAX_LENGTH = 1000
MIN_DISTINCT = 5  # "aaaaaaaaaa", "abababab12"
RUNS = ("abcdefghijklmnopqrstuvwxyz", "0123456789", "qwertyuiopasdfghjklzxcvbnm", "1qaz2wsx3edc4rfv5tgb6yhn7ujm")
SERVICE_WORDS = ("domainstudio", "domain studio")


@lru_cache(maxsize=1)
def common_passwords() -> frozenset[str]:
    from zxcvbn.frequency_lists import FREQUENCY_LISTS

    return frozenset(FREQUENCY_LISTS["passwords"])


def _is_run(text: str) -> bool:
    """A stretch of the alphabet, the digits or a keyboard row, forwards or backwards."""
    return any(text in run or text in run[::-1] for run in RUNS)


def weakness(password: str, email: str = "") -> str | None:
    """Why a guesser would find this password early, in a few words; None when it is fine."""
    lowered = password.lower()
    stem = lowered.rstrip("0123456789!@#$%^&*()-_=+.,?~ ")
    if lowered in common_passwords() or (len(stem) >= 4 and stem in common_passwords()):
        return "common"
    if len(set(lowered)) < MIN_DISTINCT:
        return "repeated"
    if _is_run(lowered) or (len(stem) >= 4 and _is_run(stem)):
        return "sequence"
    names = [w for w in re.split(r"[^a-z0-9]+", email.split("@")[0].lower()) if len(w) >= 4]
    if any(word in lowered for word in (*names, *SERVICE_WORDS)):
        return "personal"
    return None


def check_password(password: str, email: str = "") -> None:
    """Raises BadInput with the reason when sign-up must refuse the password."""
    if len(password or "") < MIN_LENGTH:
        raise BadInput("the password must have at least %(min)s characters", params={"min": MIN_LENGTH},
                       field="password")
    if len(password) > MAX_LENGTH:
        raise BadInput("the password is too long", field="password")
    why = weakness(password, email)
    if why == "personal":
        raise BadInput("the password must not contain your email name or the name of this service", field="password")
    if why is not None:
        raise BadInput("this password is among the first that guessers try (a common password, a repeated "
                       "pattern or a run of the keyboard); choose another, e.g. a few unrelated words",
                       field="password")
