"""What a store keeps of a run: a result's JSON text and an error's text, as every store takes them."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from apalis_cli.errors import MAX_ERROR_CHARS, HandlerExit, UnstorableResult, describe_error
from apalis_cli.service import MAX_RETRY_DELAY, Outcome
from apalis_cli.storable import MAX_RESULT_BYTES, check_result, encode_result

FILENAME = os.fsdecode(b"caf\xe9.png")


def test_a_result_with_a_lone_surrogate_is_kept_exactly_as_ascii_json() -> None:
    text = encode_result({"file": FILENAME, "note": "naïve"})
    assert text is not None
    text.encode()  # every store takes it: valid UTF-8
    assert json.loads(text) == {"file": FILENAME, "note": "naïve"}


def test_a_dict_with_keys_json_cannot_hold_is_kept_as_its_repr() -> None:
    assert json.loads(encode_result({(1, 2): "pair"}) or "") == "{(1, 2): 'pair'}"


class Opaque:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (Opaque(), "RuntimeError: no repr"),
        (10**5000, "ValueError: Exceeds the limit"),
        ("x" * (MAX_RESULT_BYTES + 1), "1,048,579 bytes of JSON"),
        ("é" * (MAX_RESULT_BYTES // 2), "1,048,578 bytes of JSON"),
    ],
    ids=["repr-raises", "huge-int", "too-long", "too-many-bytes"],
)
def test_a_result_no_store_can_keep_is_refused_with_why(value: Any, why: str) -> None:
    with pytest.raises(UnstorableResult, match=r"^result cannot be stored: ") as refused:
        check_result(value)
    assert why in str(refused.value)


def test_a_result_just_under_the_limit_is_kept() -> None:
    check_result("x" * (MAX_RESULT_BYTES - 2))  # with its quotes: exactly the limit


def test_errors_lose_nul_escape_surrogates_and_are_bounded() -> None:
    assert Outcome.kill("before\x00after").error == "beforeafter"
    assert Outcome.retry(f"cannot open {FILENAME}", 0.0).error == "cannot open caf\\udce9.png"
    long = Outcome.kill("e" * 10_000).error or ""
    assert long.startswith("e" * MAX_ERROR_CHARS)
    assert long.endswith("[... 6,000 more characters]")


def test_a_retry_is_never_scheduled_past_the_cap_nor_at_nan() -> None:
    import time

    now = time.time()
    assert Outcome.retry("x", float("inf")).run_at == pytest.approx(now + MAX_RETRY_DELAY, abs=5)
    assert Outcome.retry("x", float("nan")).run_at == pytest.approx(now, abs=5)


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str")


def test_describe_error_names_what_it_cannot_print_and_what_a_handler_raised() -> None:
    assert describe_error(Unprintable()) == "Unprintable: (its message could not be read)"
    carried = HandlerExit("SystemExit")
    carried.__cause__ = SystemExit(3)
    assert describe_error(carried) == "SystemExit: 3"
    assert describe_error(UnstorableResult("result cannot be stored: why")) == "result cannot be stored: why"
