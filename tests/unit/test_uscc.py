"""The USCC check (GB 32100-2015): real codes pass, every single-character typo is caught,
each malformed code is explained in a sentence that says what is wrong, and ``make_uscc``
only makes valid codes.
"""

from __future__ import annotations

import random

import pytest

from bus.schemas.uscc import (
    ALPHABET,
    LENGTH,
    check_character,
    is_valid_uscc,
    make_uscc,
    uscc_problem,
)
from tests.unit.eventdata import REAL_USCCS

FORBIDDEN = "IOSVZ"


@pytest.mark.parametrize("code", REAL_USCCS)
def test_real_published_codes_are_valid(code: str) -> None:
    assert uscc_problem(code) is None
    assert is_valid_uscc(code)
    assert check_character(code[:17]) == code[17]


def test_alphabet_is_the_31_characters_of_the_standard() -> None:
    assert len(ALPHABET) == 31
    assert not set(FORBIDDEN) & set(ALPHABET)
    assert set(ALPHABET) == set("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ") - set(FORBIDDEN)


@pytest.mark.parametrize("code", REAL_USCCS)
def test_every_single_character_substitution_is_caught(code: str) -> None:
    """Property: replacing any one character by any other (allowed or not) is never valid."""
    substitutes = ALPHABET + FORBIDDEN + "abcxyz-* 中"
    missed = []
    for position in range(LENGTH):
        for ch in substitutes:
            if ch == code[position]:
                continue
            typo = code[:position] + ch + code[position + 1 :]
            if is_valid_uscc(typo):
                missed.append(typo)
    assert missed == []


@pytest.mark.parametrize("code", REAL_USCCS)
def test_typo_in_an_allowed_character_is_reported_as_a_check_character_mismatch(
    code: str,
) -> None:
    # Position 9 onwards is the organisation code: any allowed character may stand there.
    for position in range(8, 17):
        ch = next(c for c in "0A1B" if c != code[position])
        problem = uscc_problem(code[:position] + ch + code[position + 1 :])
        assert problem is not None
        assert problem.startswith(f"check character is {code[17]!r}")


def test_swapping_two_different_characters_is_caught() -> None:
    code = "91350100M000100Y43"
    swapped = code[:8] + code[9] + code[8] + code[10:]  # 'M0' -> '0M'
    assert swapped != code
    assert not is_valid_uscc(swapped)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("91350100M000100Y4", "must be 18 characters long, got 17"),
        ("91350100M000100Y431", "must be 18 characters long, got 19"),
        ("", "must be 18 characters long, got 0"),
    ],
)
def test_wrong_length_says_the_length(code: str, expected: str) -> None:
    assert uscc_problem(code) == expected


@pytest.mark.parametrize("value", [None, 913501, b"91350100M000100Y43"])
def test_non_strings_are_explained(value: object) -> None:
    problem = uscc_problem(value)
    assert problem == f"must be a string of 18 characters, got {type(value).__name__}"
    assert not is_valid_uscc(value)


def test_lower_case_is_named_with_its_position() -> None:
    problem = uscc_problem("91350100m000100Y43")
    assert problem is not None
    assert "character 9 'm'" in problem
    assert "lower case is not allowed" in problem


def test_lower_case_of_a_whole_valid_code_is_rejected() -> None:
    assert uscc_problem("91330100799655058b") is not None
    assert "character 18 'b'" in (uscc_problem("91330100799655058b") or "")


@pytest.mark.parametrize("letter", FORBIDDEN)
def test_forbidden_letters_are_named(letter: str) -> None:
    code = "91350100M000100Y43"
    problem = uscc_problem(code[:10] + letter + code[11:])
    assert problem is not None
    assert f"character 11 {letter!r} is not allowed" in problem
    assert "except I, O, S, V, Z" in problem
    # A forbidden upper-case letter is not a lower-case problem.
    assert "lower case" not in problem


def test_forbidden_letter_in_lower_case_gets_no_lower_case_hint() -> None:
    # 'o'.upper() is 'O', itself forbidden: telling the user to upper-case it would mislead.
    problem = uscc_problem("9135010o" + "M000100Y43")
    assert problem is not None
    assert "character 8 'o' is not allowed;" in problem
    assert "lower case" not in problem


@pytest.mark.parametrize("division", ["A50100", "3501B0", "35010X"])
def test_non_digit_division_code_is_named(division: str) -> None:
    first17 = "91" + division + "M000100Y4"
    code = first17 + check_character(first17)  # right check character: only the division is bad
    assert uscc_problem(code) == (
        f"characters 3-8 must be the administrative division code, got {division!r}"
    )


def test_wrong_check_character_says_which_one_was_expected() -> None:
    assert uscc_problem("91350100M000100Y44") == (
        "check character is '4' but the code's characters give '3'"
    )


def test_make_uscc_produces_valid_codes_for_many_seeds() -> None:
    codes = {make_uscc(rng=random.Random(seed)) for seed in range(2000)}
    bad = {c: uscc_problem(c) for c in codes if not is_valid_uscc(c)}
    assert bad == {}
    assert len(codes) == 2000  # and they differ: usable as distinct subjects


def test_make_uscc_is_deterministic_and_honours_division_and_authority() -> None:
    a = make_uscc("110108", rng=random.Random(42), authority="52")
    b = make_uscc("110108", rng=random.Random(42), authority="52")
    assert a == b
    assert a[:2] == "52"
    assert a[2:8] == "110108"
    assert is_valid_uscc(a)


def test_make_uscc_default_is_a_kunshan_company() -> None:
    code = make_uscc(rng=random.Random(1))
    assert code.startswith("91320583")
