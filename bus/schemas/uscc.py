"""The unified social credit code (统一社会信用代码, GB 32100-2015).

Eighteen characters from a 31-letter alphabet (digits and capitals without I, O, S, V, Z):
registration authority (1), organisation category (1), administrative division (6),
organisation code (9), check character (1). The check character is
``31 - (sum(value(c_i) * 3**i mod 31)) mod 31`` over the first seventeen — one typo in a
code is always caught, which is why the bus can use the USCC as its correlation key.
"""

from __future__ import annotations

import random
from functools import lru_cache

ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_VALUE = {c: i for i, c in enumerate(ALPHABET)}
_WEIGHTS = tuple(pow(3, i, 31) for i in range(17))  # 1, 3, 9, 27, 19, 26, 16, ...
LENGTH = 18


def check_character(first17: str) -> str:
    """The check character for the first seventeen characters of a code."""
    total = sum(_VALUE[c] * w for c, w in zip(first17, _WEIGHTS, strict=True))
    return ALPHABET[(31 - total % 31) % 31]


def uscc_problem(code: object) -> str | None:
    """Why ``code`` is not a valid USCC, or ``None`` when it is.

    The sentence is meant for people: it says which character is wrong and why.
    """
    if not isinstance(code, str):
        return f"must be a string of {LENGTH} characters, got {type(code).__name__}"
    return _problem(code)


@lru_cache(maxsize=65536)  # the same enterprises recur; checking is 10x a dict lookup
def _problem(code: str) -> str | None:
    if len(code) != LENGTH:
        return f"must be {LENGTH} characters long, got {len(code)}"
    for i, c in enumerate(code):
        if c not in _VALUE:
            hint = " (lower case is not allowed)" if c.upper() in _VALUE else ""
            return (
                f"character {i + 1} {c!r} is not allowed{hint}; "
                "a USCC uses digits and capitals except I, O, S, V, Z"
            )
    if not code[2:8].isdigit():
        return f"characters 3-8 must be the administrative division code, got {code[2:8]!r}"
    expected = check_character(code[:17])
    if code[17] != expected:
        return f"check character is {code[17]!r} but the code's characters give {expected!r}"
    return None


def is_valid_uscc(code: object) -> bool:
    """True when ``code`` is a well-formed USCC with the right check character."""
    return uscc_problem(code) is None


def make_uscc(
    division: str = "320583", *, rng: random.Random | None = None, authority: str = "91"
) -> str:
    """A well-formed USCC for tests and demos (default division: Kunshan, 320583).

    ``authority`` "91" is a company registered with market regulation, the common case.
    """
    r = rng or random.Random()
    org = "".join(r.choice(ALPHABET[:10] + ALPHABET[10:]) for _ in range(8))
    first17 = authority + division + org + r.choice("0123456789")
    return first17 + check_character(first17)
