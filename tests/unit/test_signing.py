"""Signature and bearer checks, proven against the official Inngest SDK's own signer."""

from __future__ import annotations

import pytest
from inngest._internal import net
from starlette.datastructures import Headers

from app.security.signing import (
    MAX_AUTHORIZATION_LEN,
    MAX_SIGNATURE_HEADER_LEN,
    SignatureError,
    authenticate,
    canonicalize_body,
    compute_signature,
    sign_request,
    strip_signing_key_prefix,
    verify_bearer,
    verify_inngest_signature,
)

# Obviously fake keys.
KEY = "signkey-test-" + "ab" * 32
FALLBACK = "signkey-test-" + "cd" * 32
OTHER = "signkey-test-" + "ef" * 32
NOW = 1_700_000_000
MAX_AGE = 300


def sdk_sign(body: bytes, key: str = KEY, t: int = NOW) -> str:
    """The official SDK signer; despite its parameter name it takes unix seconds."""
    header = net.sign_request(body, key, t)
    assert isinstance(header, str)
    return header


def verify(header: str | None, body: bytes, keys=(KEY,), now: float = NOW) -> None:
    verify_inngest_signature(header, body, list(keys), now=now, max_age=MAX_AGE)


def check_of(fn, *args, **kwargs) -> SignatureError:
    with pytest.raises(SignatureError) as info:
        fn(*args, **kwargs)
    return info.value


# --- acceptance ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{}",
        b'{"data": {}, "event": {"name": "inngest/scheduled.timer"}}',
        # Non-canonical: spaces, reordered keys, unicode escapes, exponent numbers.
        b'{ "b" : [1, 2.50, 1e2],\n "a":"caf\\u00e9 \\ud83d\\ude00", "c": {"z": null, "y": true} }',
        '{"name": "caf\u00e9", "emoji": "\U0001f600"}'.encode(),
    ],
)
def test_sdk_signed_request_is_accepted(body: bytes) -> None:
    verify(sdk_sign(body), body)


def test_both_sides_canonicalize_so_reformatted_body_still_verifies() -> None:
    signed_body = b'{"a":1,"b":"x"}'
    sent_body = b'{ "b": "\\u0078",   "a": 1.0 }'
    verify(sdk_sign(signed_body), sent_body)


@pytest.mark.parametrize(
    "key",
    [
        "signkey-prod-" + "12" * 32,
        "signkey-test-" + "34" * 32,
        "signkey-branch-" + "56" * 32,
        "56" * 32,  # no prefix at all
    ],
)
def test_key_prefixes(key: str) -> None:
    body = b'{"x": 1}'
    verify(sdk_sign(body, key), body, keys=(key,))


def test_prefix_is_stripped_before_use() -> None:
    assert strip_signing_key_prefix("signkey-branch-abcd") == "abcd"
    assert strip_signing_key_prefix("abcd") == "abcd"
    body = b"{}"
    # The prefix is not part of the secret: another env's prefix, same hex, same signature.
    verify(sdk_sign(body, "signkey-prod-" + "ab" * 32), body, keys=(KEY,))


def test_fallback_key_is_accepted() -> None:
    body = b'{"rotate": true}'
    verify(sdk_sign(body, FALLBACK), body, keys=(KEY, FALLBACK))


def test_parameter_order_does_not_matter() -> None:
    body = b"{}"
    t_part, s_part = sdk_sign(body).split("&")
    verify(f"{s_part}&{t_part}", body)


def test_timestamp_window_edges_accepted() -> None:
    body = b"{}"
    verify(sdk_sign(body, t=NOW - MAX_AGE), body)
    verify(sdk_sign(body, t=NOW + MAX_AGE), body)


def test_our_signer_matches_the_sdk() -> None:
    for body in (b"", b"{}", b'{ "b": 2, "a": [1, {"d": "\\u00e9", "c": 0.1}] }'):
        for key in (KEY, "signkey-prod-" + "9f" * 32):
            assert sign_request(body, key, NOW) == sdk_sign(body, key, NOW)
            assert compute_signature(body, key, NOW) == sdk_sign(body, key, NOW).split("s=")[1]
    verify(sign_request(b'{"a": 1}', KEY, NOW), b'{"a": 1}')


def test_canonicalize_matches_rfc8785_examples() -> None:
    assert canonicalize_body(b"") == b""
    assert canonicalize_body(b'{"b": 1, "a": [1.0, 1e3, "\\u0041"]}') == b'{"a":[1,1000,"A"],"b":1}'


# --- rejection ----------------------------------------------------------------------------


def test_tampered_body_rejected() -> None:
    header = sdk_sign(b'{"amount": 1}')
    assert check_of(verify, header, b'{"amount": 2}').check == "bad_signature"


def test_signature_over_other_body_rejected() -> None:
    assert check_of(verify, sdk_sign(b"{}"), b"").check == "bad_signature"
    assert check_of(verify, sdk_sign(b""), b'{"a": 1}').check == "bad_signature"


def test_wrong_key_rejected() -> None:
    body = b"{}"
    assert check_of(verify, sdk_sign(body, OTHER), body, keys=(KEY, FALLBACK)).check == (
        "bad_signature"
    )


def test_timestamp_swapped_after_signing_rejected() -> None:
    body = b"{}"
    sig = sdk_sign(body).split("s=")[1]
    assert check_of(verify, f"t={NOW + 1}&s={sig}", body).check == "bad_signature"


def test_stale_and_future_timestamps_rejected() -> None:
    body = b"{}"
    stale = check_of(verify, sdk_sign(body, t=NOW - MAX_AGE - 1), body)
    future = check_of(verify, sdk_sign(body, t=NOW + MAX_AGE + 1), body)
    assert stale.check == "stale_timestamp"
    assert future.check == "future_timestamp"
    # Fractional clocks: just outside by a fraction of a second still fails.
    assert check_of(verify, sdk_sign(body), body, now=NOW + MAX_AGE + 0.5).check == (
        "stale_timestamp"
    )


def test_header_without_timestamp_rejected() -> None:
    """The Python SDK would accept this (it signs body only); we do not."""
    body = b"{}"
    sig = sdk_sign(body).split("s=")[1]
    assert check_of(verify, f"s={sig}", body).check == "missing_timestamp"


@pytest.mark.parametrize(
    "header",
    [
        "garbage",
        "t=&s=",
        "t=1700000000",
        "t=1700000000&s=",
        "t=1700000000&s=zz" + "a" * 62,
        "t=1700000000&s=" + "a" * 63,
        "t=1700000000&s=" + "a" * 65,
        "t=abc&s=" + "a" * 64,
        "t=-5&s=" + "a" * 64,
        "t=1_700_000_000&s=" + "a" * 64,
        "t=1700000000&&s=" + "a" * 64,
        "t=1700000000&s=" + "a" * 64 + "\r\nX-Evil: 1",
        "t=\u0661\u0667&s=" + "a" * 64,  # Arabic-Indic digits: int() would accept them
        "=&=",
    ],
)
def test_garbage_headers_rejected(header: str) -> None:
    assert check_of(verify, header, b"{}").check == "malformed_signature"


@pytest.mark.parametrize("header", [None, "", "   "])
def test_missing_signature(header: str | None) -> None:
    assert check_of(verify, header, b"{}").check == "missing_signature"


def test_duplicated_params_rejected() -> None:
    body = b"{}"
    good = sdk_sign(body)
    bad_sig = "s=" + "0" * 64
    for header in (f"{good}&{bad_sig}", f"{bad_sig}&{good}", f"t={NOW - 9999}&{good}"):
        assert check_of(verify, header, body).check == "malformed_signature"


def test_huge_header_rejected() -> None:
    body = b"{}"
    header = sdk_sign(body) + "&pad=" + "x" * 10_000
    assert check_of(verify, header, body).check == "malformed_signature"


def test_signature_header_length_limit_is_exact() -> None:
    body = b"{}"
    signed = sdk_sign(body) + "&pad="
    at_limit = signed + "x" * (MAX_SIGNATURE_HEADER_LEN - len(signed))
    assert len(at_limit) == MAX_SIGNATURE_HEADER_LEN == 256
    verify(at_limit, body)  # unknown fields are ignored; the length is what is tested
    one_past = at_limit + "x"
    assert check_of(verify, one_past, body).check == "malformed_signature"


@pytest.mark.parametrize(
    "header",
    [
        # A blank field is a malformed field, not an absent one.
        f"t=&s={'a' * 64}",
        f"s={'a' * 64}&t=",
        # A blank duplicate is still a duplicate (it must not vanish and leave the good one).
        "t=&" + sdk_sign(b"{}"),
        "s=&" + sdk_sign(b"{}"),
        sdk_sign(b"{}") + "&t=",
    ],
)
def test_blank_fields_are_malformed(header: str) -> None:
    assert check_of(verify, header, b"{}").check == "malformed_signature"


def test_duplicate_fields_say_so() -> None:
    good = sdk_sign(b"{}")
    error = check_of(verify, f"{good}&t={NOW}", b"{}")
    assert error.check == "malformed_signature"
    assert error.message == "X-Inngest-Signature has duplicate fields"
    assert str(error) == error.message


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"\xff\xfe{}",
        '{"a": 1}'.encode("utf-16"),
        b'{"a": 1, "a": 2}',
        b'{"n": NaN}',
        b'{"n": 1e999}',
        b'{"s": "\\ud800"}',
        b'{"n": 9007199254740993}',
        b"[" * 100_000 + b"]" * 100_000,
    ],
)
def test_invalid_bodies_rejected(body: bytes) -> None:
    header = f"t={NOW}&s={'a' * 64}"
    assert check_of(verify, header, body).check == "invalid_body"
    assert check_of(canonicalize_body, body).check == "invalid_body"


def test_no_key_configured() -> None:
    assert check_of(verify, sdk_sign(b"{}"), b"{}", keys=()).check == "no_key_configured"
    assert check_of(verify, sdk_sign(b"{}"), b"{}", keys=("",)).check == "no_key_configured"
    assert check_of(verify_bearer, f"Bearer {KEY}", []).check == "no_key_configured"


@pytest.mark.parametrize("prefix_only", ["signkey-test-", "signkey-prod-", "signkey-branch-"])
def test_a_key_that_is_only_the_prefix_is_no_key(prefix_only: str) -> None:
    """Stripped, it is empty: refused as no key, never used as an empty HMAC key."""
    body = b"{}"
    # What an attacker could compute knowing nothing: the HMAC under an empty key.
    empty_key_sig = sdk_sign(body, prefix_only)
    assert check_of(verify, empty_key_sig, body, keys=(prefix_only,)).check == "no_key_configured"
    assert check_of(verify, empty_key_sig, body, keys=(prefix_only, "")).check == (
        "no_key_configured"
    )
    assert check_of(verify_bearer, f"Bearer {prefix_only}", [prefix_only]).check == (
        "no_key_configured"
    )
    assert check_of(auth, {"authorization": f"Bearer {KEY}"}, keys=(prefix_only,)).check == (
        "no_key_configured"
    )
    # Next to a real key it is skipped: the real key works, the empty one never matches.
    verify(sdk_sign(body), body, keys=(prefix_only, KEY))
    assert check_of(verify, empty_key_sig, body, keys=(prefix_only, KEY)).check == "bad_signature"
    assert check_of(verify_bearer, f"Bearer {prefix_only}", [prefix_only, KEY]).check == (
        "bad_token"
    )
    verify_bearer(f"Bearer {KEY}", [prefix_only, KEY])


def test_prefix_is_stripped_once_from_the_start_only() -> None:
    assert strip_signing_key_prefix("signkey-test-signkey-prod-ab") == "signkey-prod-ab"
    assert strip_signing_key_prefix("ab-signkey-test-cd") == "ab-signkey-test-cd"
    assert strip_signing_key_prefix("signkey-test-") == ""
    assert strip_signing_key_prefix("signkey--ab") == "signkey--ab"


# --- bearer -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", [f"Bearer {KEY}", f"bearer {KEY}", f"BEARER {KEY}", f" Bearer  {KEY} "]
)
def test_bearer_accepted(value: str) -> None:
    verify_bearer(value, [KEY])
    verify_bearer(value, [OTHER, KEY])


@pytest.mark.parametrize(
    ("value", "check"),
    [
        (None, "missing_credentials"),
        ("", "missing_credentials"),
        ("Bearer", "bad_token"),
        ("Bearer ", "bad_token"),
        (f"Bearer {OTHER}", "bad_token"),
        (f"Bearer {KEY[:-1]}", "bad_token"),
        (f"Bearer {KEY}x", "bad_token"),
        (f"Bearer {strip_signing_key_prefix(KEY)}", "bad_token"),  # documented: full key only
        (f"Bearer {KEY} extra", "bad_token"),
        (f"Bearer {KEY}\r\nX-Evil: 1", "bad_token"),
        (f"Bearer {KEY}\n", "bad_token"),
        (f"Bearer\t{KEY}", "bad_token"),
        ("Bearer " + "a" * 5000, "bad_token"),
        (f"Basic {KEY}", "wrong_scheme"),
        (KEY, "wrong_scheme"),
        (f"Token {KEY}", "wrong_scheme"),
    ],
)
def test_bearer_rejected(value: str | None, check: str) -> None:
    assert check_of(verify_bearer, value, [KEY]).check == check


def test_bearer_token_is_one_word_even_if_a_key_has_a_space() -> None:
    spaced = "signkey-test-ab cd"
    assert check_of(verify_bearer, f"Bearer {spaced}", [spaced]).check == "bad_token"


def test_authorization_length_limit_is_exact() -> None:
    prefix = "Bearer "
    long_key = "signkey-test-" + "a" * (MAX_AUTHORIZATION_LEN - len(prefix) - 13)
    at_limit = prefix + long_key
    assert len(at_limit) == MAX_AUTHORIZATION_LEN == 1024
    verify_bearer(at_limit, [long_key])
    longer_key = long_key + "a"
    assert check_of(verify_bearer, prefix + longer_key, [longer_key]).check == "bad_token"


# --- authenticate -------------------------------------------------------------------------


def auth(headers, body: bytes = b"{}", keys=(KEY, FALLBACK)) -> str:
    return authenticate(headers, body, list(keys), now=NOW, max_age=MAX_AGE)


def test_authenticate_picks_method() -> None:
    assert auth({"X-Inngest-Signature": sdk_sign(b"{}")}) == "inngest_signature"
    assert auth({"x-inngest-signature": sdk_sign(b"{}", FALLBACK)}) == "inngest_signature"
    assert auth({"AUTHORIZATION": f"Bearer {KEY}"}) == "bearer"
    assert auth(Headers({"authorization": f"Bearer {FALLBACK}"})) == "bearer"


def test_authenticate_signature_header_wins_over_bearer() -> None:
    # A bad signature is not rescued by a good bearer key.
    headers = {"X-Inngest-Signature": sdk_sign(b"{}", OTHER), "Authorization": f"Bearer {KEY}"}
    assert check_of(auth, headers).check == "bad_signature"


def test_authenticate_errors() -> None:
    assert check_of(auth, {}).check == "missing_credentials"
    assert check_of(auth, {"Content-Type": "application/json"}).check == "missing_credentials"
    assert check_of(auth, {"Authorization": f"Bearer {KEY}"}, keys=()).check == "no_key_configured"
    assert check_of(auth, {}, keys=()).check == "no_key_configured"


def test_authenticate_rejects_duplicate_credential_headers() -> None:
    raw = [
        (b"x-inngest-signature", sdk_sign(b"{}").encode()),
        (b"x-inngest-signature", sdk_sign(b"{}", OTHER).encode()),
    ]
    error = check_of(auth, Headers(raw=raw))
    assert error.check == "malformed_signature"
    assert str(error) == "x-inngest-signature header sent more than once"
    raw = [(b"authorization", f"Bearer {KEY}".encode()), (b"authorization", b"Bearer x")]
    error = check_of(auth, Headers(raw=raw))
    assert error.check == "bad_token"
    assert str(error) == "authorization header sent more than once"


# --- messages -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("check", "message"),
    [
        ("missing_signature", "X-Inngest-Signature header is missing or empty"),
        ("malformed_signature", "X-Inngest-Signature header is malformed"),
        ("missing_timestamp", "X-Inngest-Signature header has no timestamp"),
        ("stale_timestamp", "signature timestamp is too old"),
        ("future_timestamp", "signature timestamp is too far in the future"),
        ("invalid_body", "request body is not valid JSON"),
        ("bad_signature", "signature does not match any configured signing key"),
        ("no_key_configured", "no signing key is configured"),
        ("missing_credentials", "no X-Inngest-Signature or Authorization header"),
        ("wrong_scheme", "unsupported authorization scheme; use Bearer"),
        ("bad_token", "credentials do not match any configured signing key"),
        ("not_a_known_check", "authentication failed"),
    ],
)
def test_each_check_has_its_message(check: str, message: str) -> None:
    """The message is the 401's detail (str(error)); a caller may override it."""
    error = SignatureError(check)
    assert (error.check, error.message, str(error)) == (check, message, message)
    custom = SignatureError(check, "custom text")
    assert (custom.check, custom.message, str(custom)) == (check, "custom text", "custom text")


def test_raised_errors_carry_their_checks_message() -> None:
    stale = check_of(verify, sdk_sign(b"{}", t=NOW - MAX_AGE - 1), b"{}")
    assert str(stale) == "signature timestamp is too old"
    assert str(check_of(verify_bearer, f"Basic {KEY}", [KEY])) == (
        "unsupported authorization scheme; use Bearer"
    )


# --- messages never leak ------------------------------------------------------------------


def test_error_messages_never_contain_secrets() -> None:
    body = b'{"secret_body_marker": 1}'
    good = sdk_sign(body)
    wrong = sdk_sign(body, OTHER)
    attempts = [
        lambda: verify(wrong, body),
        lambda: verify(good, b'{"secret_body_marker": 2}'),
        lambda: verify(good, body, now=NOW + 10_000),
        lambda: verify(good, body, now=NOW - 10_000),
        lambda: verify(good.split("&")[1], body),
        lambda: verify(good + "&" + good, body),
        lambda: verify(good, b"{secret_body_marker"),
        lambda: verify_bearer(f"Bearer {OTHER}", [KEY]),
        lambda: verify_bearer(f"Basic {KEY}", [KEY]),
        lambda: auth({"authorization": f"Bearer {OTHER}"}),
    ]
    forbidden = [
        KEY,
        OTHER,
        FALLBACK,
        strip_signing_key_prefix(KEY),
        strip_signing_key_prefix(OTHER),
        good.split("s=")[1],
        wrong.split("s=")[1],
        "secret_body_marker",
    ]
    for attempt in attempts:
        with pytest.raises(SignatureError) as info:
            attempt()
        text = f"{info.value} {info.value.message!r} {info.value.args!r}"
        assert len(info.value.message) < 120
        for secret in forbidden:
            assert secret not in text
        # No chained exception carrying parser details (which could quote the body).
        assert info.value.__cause__ is None
