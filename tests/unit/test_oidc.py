"""app/security/oidc.py: the pure ID-token checks (shape, header, signature, claims), with
RSA keys generated here and the clock passed in."""

from __future__ import annotations

import pytest

from app.security import oidc
from app.security.oidc import (
    CLOCK_SKEW_SECONDS,
    MAX_ID_TOKEN_LEN,
    MAX_KID_LEN,
    KeysUnavailable,
    OIDCError,
    OIDCPolicy,
    TokenRejected,
    UnknownKeyId,
    bearer_id_token,
    looks_like_jwt,
    parse_header,
    parse_jwks,
    verify_id_token,
)
from app.security.signing import SignatureError
from tests.oidc_support import (
    AUDIENCE,
    NOW,
    SERVICE_ACCOUNT,
    RsaKey,
    claims,
    forge_hs256,
    forge_none,
    sign,
    sign_header,
    tamper,
)

POLICY = OIDCPolicy.build(audiences=[AUDIENCE], service_accounts=[SERVICE_ACCOUNT.upper()])


@pytest.fixture(scope="module")
def key() -> RsaKey:
    return RsaKey.generate("key-1")


@pytest.fixture(scope="module")
def other_key() -> RsaKey:
    return RsaKey.generate("key-2")


@pytest.fixture(scope="module")
def keys(key: RsaKey) -> dict:
    return parse_jwks({"keys": [key.jwk()]})


def verify(token: str, keys: dict, now: float = NOW, policy: OIDCPolicy = POLICY):
    return verify_id_token(token, keys, policy, now=now)


def rejected(token: str, keys: dict, now: float = NOW, policy: OIDCPolicy = POLICY) -> str:
    with pytest.raises(TokenRejected) as info:
        verify(token, keys, now, policy)
    # No message ever carries the token or a piece of it.
    for part in [token, *token.split(".")]:
        assert len(part) < 8 or part not in str(info.value)
    return info.value.check


def test_a_valid_token_is_accepted(key, keys):
    verified = verify(sign(key, claims()), keys)
    assert verified.email == SERVICE_ACCOUNT
    assert verified.audience == AUDIENCE
    assert verified.issuer == "https://accounts.google.com"
    assert verified.subject == "112233445566778899000"


def test_both_google_issuers_and_any_configured_audience(key, keys):
    policy = OIDCPolicy.build(
        audiences=["https://a.example", AUDIENCE], service_accounts=[SERVICE_ACCOUNT]
    )
    verify(sign(key, claims(iss="accounts.google.com")), keys, policy=policy)
    verify(sign(key, claims(aud="https://a.example")), keys, policy=policy)
    # email_verified as Google's older tokens spelled it.
    verify(sign(key, claims(email_verified="true")), keys)


@pytest.mark.parametrize(
    ("change", "check"),
    [
        ({"aud": "https://other.example"}, "bad_audience"),
        ({"aud": [AUDIENCE, "https://other.example"]}, "bad_audience"),
        ({"aud": None}, "bad_audience"),
        ({"iss": "https://evil.example"}, "bad_issuer"),
        ({"iss": "https://accounts.google.com/"}, "bad_issuer"),
        ({"iss": None}, "bad_issuer"),
        ({"email": "intruder@evil.iam.gserviceaccount.com"}, "email_not_allowed"),
        ({"email": None}, "missing_claim"),
        ({"email_verified": False}, "email_not_verified"),
        ({"email_verified": "false"}, "email_not_verified"),
        ({"email_verified": None}, "email_not_verified"),
        ({"exp": None}, "missing_claim"),
        ({"iat": None}, "missing_claim"),
        ({"exp": "9999999999"}, "malformed_token"),
        ({"iat": True}, "malformed_token"),
    ],
)
def test_claims_that_are_refused(key, keys, change, check):
    assert rejected(sign(key, claims(**change)), keys) == check


def test_times_with_the_documented_skew(key, keys):
    skew = CLOCK_SKEW_SECONDS
    token = sign(key, claims(now=NOW))  # iat NOW, exp NOW + 3600
    verify(token, keys, now=NOW + 3600 + skew - 1)
    assert rejected(token, keys, now=NOW + 3600 + skew) == "expired"
    # Issued a little in the future (clocks differ): accepted; beyond the skew: refused.
    verify(token, keys, now=NOW - skew)
    assert rejected(token, keys, now=NOW - skew - 1) == "issued_in_future"
    future = sign(key, claims(nbf=NOW + 600))
    assert rejected(future, keys) == "not_yet_valid"
    verify(future, keys, now=NOW + 600 - skew)


def test_forged_and_tampered_tokens(key, other_key, keys):
    good = sign(key, claims())
    assert rejected(forge_none(claims(), key.kid), keys) == "bad_algorithm"
    assert rejected(forge_hs256(claims(), key), keys) == "bad_algorithm"
    assert rejected(tamper(good, email="intruder@evil.example"), keys) == "bad_signature"
    assert rejected(tamper(good, aud="https://other.example"), keys) == "bad_signature"
    # Signed by a key the issuer does not publish, under the published kid.
    impostor = RsaKey(key.kid, other_key.private)
    assert rejected(sign(impostor, claims()), keys) == "bad_signature"
    # A signature cut short or emptied.
    head, payload, sig = good.split(".")
    assert rejected(f"{head}.{payload}.{sig[:-4]}", keys) in ("bad_signature", "malformed_token")
    assert rejected(f"{head}.{payload}.", keys) == "bad_signature"


def test_the_pyjwt_layer_refuses_hmac_even_if_the_header_check_were_bypassed(key, keys):
    # Defence in depth: parse_header refuses HS256 first; PyJWT is also told RS256 only.
    with pytest.raises(TokenRejected) as info:
        oidc._verified_claims(forge_hs256(claims(), key), keys[key.kid])
    assert info.value.check == "bad_algorithm"


def test_unknown_kid_and_header_problems(key, other_key, keys):
    with pytest.raises(UnknownKeyId):
        verify(sign(other_key, claims()), keys)
    no_kid = sign(key, claims(), kid=None)
    assert rejected(no_kid, keys) == "missing_kid"
    assert rejected(sign(key, claims(), crit=["exp"]), keys) == "malformed_token"
    for junk in ("a.b.c", "eyJ.eyJ.", "x" * 5000, "not a token", ""):
        assert rejected(junk, keys) == "malformed_token"


@pytest.mark.filterwarnings("ignore:The RSA key is 1024 bits")
def test_short_rsa_keys_are_refused():
    weak = RsaKey.generate("weak", bits=1024)
    keys = {weak.kid: weak.public}
    assert rejected(sign(weak, claims()), keys) == "malformed_token"


def test_parse_header_needs_no_key(key):
    assert parse_header(sign(key, claims())).kid == key.kid


def test_parse_jwks_keeps_rs256_signing_keys_only(key, other_key):
    ec = {"kty": "EC", "kid": "ec", "crv": "P-256", "x": "AA", "y": "AA"}
    enc = {**other_key.jwk(), "use": "enc"}
    hs = {"kty": "oct", "kid": "hs", "k": "c2VjcmV0"}
    broken = {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"}
    keys = parse_jwks({"keys": [key.jwk(), ec, enc, hs, broken, "junk", {"kty": "RSA"}]})
    assert list(keys) == [key.kid]
    for bad in ({}, {"keys": []}, {"keys": [ec]}, [], "x", None):
        with pytest.raises(ValueError):
            parse_jwks(bad)


def test_bearer_id_token_routes_by_shape(key):
    token = sign(key, claims())
    assert bearer_id_token({"authorization": f"Bearer {token}"}) == token
    assert bearer_id_token({"authorization": f"bearer  {token} "}) == token
    # The static signing key, another scheme, no header, a signed request: not this path.
    assert bearer_id_token({"authorization": "Bearer signkey-prod-abc"}) is None
    assert bearer_id_token({"authorization": f"Basic {token}"}) is None
    assert bearer_id_token({}) is None
    assert bearer_id_token({"authorization": f"Bearer {token}", "x-inngest-signature": "t"}) is None
    assert looks_like_jwt(token) and looks_like_jwt(forge_none(claims(), "k"))
    assert not looks_like_jwt("signkey-test-" + "5e" * 32)


def test_bearer_id_token_refuses_a_repeated_header(key):
    token = sign(key, claims())

    class Twice(dict):
        def items(self):
            return [("authorization", f"Bearer {token}"), ("Authorization", "Bearer x")]

    with pytest.raises(SignatureError):
        bearer_id_token(Twice())


def test_errors_are_typed_and_say_nothing_secret():
    assert issubclass(UnknownKeyId, TokenRejected) and issubclass(TokenRejected, OIDCError)
    unavailable = KeysUnavailable(30)
    assert isinstance(unavailable, OIDCError) and not isinstance(unavailable, TokenRejected)
    assert unavailable.retry_after == 30 and unavailable.check == "keys_unavailable"
    for check in oidc._MESSAGES:
        assert "eyJ" not in OIDCError(check).message


def test_refused_claims_are_kept_for_the_log_not_the_message(key, keys):
    with pytest.raises(TokenRejected) as info:
        verify(sign(key, claims(aud="https://typo.example")), keys)
    assert info.value.log_fields == {"audience": "https://typo.example"}
    assert "typo" not in str(info.value)
    with pytest.raises(TokenRejected) as info:
        verify(sign(key, claims(email="someone@else.iam.gserviceaccount.com")), keys)
    assert info.value.log_fields == {"email": "someone@else.iam.gserviceaccount.com"}
    # Before the signature verified, nothing from the token is kept.
    with pytest.raises(TokenRejected) as info:
        verify(tamper(sign(key, claims()), aud="https://typo.example"), keys)
    assert info.value.log_fields == {}


# --- the header: crit, kid and size bounds -----------------------------------------------


def test_a_critical_extension_is_refused_even_one_pyjwt_understands(key, keys):
    # PyJWT itself refuses crit names it does not know, but accepts "b64" (RFC 7797): this
    # verifier understands no extension, so a validly signed token that makes one critical
    # is refused (RFC 7515, 4.1.11) whatever PyJWT would do with it.
    header = {"alg": "RS256", "typ": "JWT", "kid": key.kid, "b64": True}
    verify(sign_header(key, header, claims()), keys)
    assert rejected(sign_header(key, {**header, "crit": ["b64"]}, claims()), keys) == (
        "malformed_token"
    )


def test_the_kid_is_a_non_empty_string_of_at_most_256_characters(key):
    # A refused kid is missing_kid, decided before any key lookup: never unknown_key, which
    # would make the caller refetch the issuer's keys for a junk header.
    longest = RsaKey("k" * MAX_KID_LEN, key.private)
    keys = parse_jwks({"keys": [longest.jwk()]})
    assert verify(sign(longest, claims()), keys).email == SERVICE_ACCOUNT
    too_long = RsaKey("k" * (MAX_KID_LEN + 1), key.private)
    assert rejected(sign(too_long, claims()), keys) == "missing_kid"
    assert rejected(sign(key, claims(), kid=""), keys) == "missing_kid"


def _token_of_length(key: RsaKey, length: int) -> str:
    """A valid token of exactly `length` characters (a padding claim, and a header field to
    reach the lengths base64 of the payload alone skips)."""
    for extra in range(4):
        for pad in range(length):
            token = sign(key, claims(pad="p" * pad), x="x" * extra)
            if len(token) >= length:
                break
        if len(token) == length:
            return token
    raise AssertionError(f"no token of {length} characters")


def test_the_token_size_bound_is_exact(key, keys):
    assert verify(_token_of_length(key, MAX_ID_TOKEN_LEN), keys).email == SERVICE_ACCOUNT
    # Validly signed, one character longer: refused before the signature is looked at.
    assert rejected(_token_of_length(key, MAX_ID_TOKEN_LEN + 1), keys) == "malformed_token"


# --- the claims ----------------------------------------------------------------------------


def test_the_configured_issuers_replace_googles(key, keys):
    policy = OIDCPolicy.build(
        audiences=[AUDIENCE], service_accounts=[SERVICE_ACCOUNT], issuers=["https://idp.example"]
    )
    verify(sign(key, claims(iss="https://idp.example")), keys, policy=policy)
    assert rejected(sign(key, claims()), keys, policy=policy) == "bad_issuer"


def test_the_configured_clock_skew_is_used(key, keys):
    strict = OIDCPolicy.build(
        audiences=[AUDIENCE], service_accounts=[SERVICE_ACCOUNT], clock_skew=0
    )
    token = sign(key, claims())  # exp NOW + 3600
    verify(token, keys, now=NOW + 3599, policy=strict)
    assert rejected(token, keys, now=NOW + 3600, policy=strict) == "expired"
    assert rejected(token, keys, now=NOW - 1, policy=strict) == "issued_in_future"


def test_times_are_checked_against_the_injected_clock_only(key, keys):
    # A token that expired in 2020 is valid at a 2020 clock: PyJWT's own exp check, which
    # reads the host's clock, is off; the injected one decides (and says "expired" later).
    then = 1_600_000_000
    token = sign(key, claims(now=then))
    assert verify(token, keys, now=then).email == SERVICE_ACCOUNT
    assert rejected(token, keys, now=then + 7200) == "expired"


def test_claims_the_verifier_does_not_decide_on_never_refuse_a_token(key, keys):
    # Only iss, aud, email, email_verified and the times decide. A sub that is not a string
    # is not recorded; a jti of any type is ignored (PyJWT's own checks of both are off).
    verified = verify(sign(key, claims(sub=112233, jti=42)), keys)
    assert verified.email == SERVICE_ACCOUNT and verified.subject is None


@pytest.mark.parametrize("email", ["", 12345, ["poller@insights-prod.iam.gserviceaccount.com"]])
def test_an_email_that_is_not_a_non_empty_string_is_a_missing_claim(key, keys, email):
    assert rejected(sign(key, claims(email=email)), keys) == "missing_claim"


# --- what a refusal says ---------------------------------------------------------------------


def test_a_refusal_says_its_reason(key, other_key, keys):
    # str(error) is the 401's detail.
    with pytest.raises(TokenRejected) as info:
        verify(sign(key, claims()), keys, now=NOW + 7200)
    assert (info.value.check, str(info.value)) == ("expired", "token has expired")
    with pytest.raises(UnknownKeyId) as unknown:
        verify(sign(other_key, claims()), keys)
    assert unknown.value.check == "unknown_key"
    assert str(unknown.value) == "token is signed with a key the issuer does not publish"


def test_refused_issuer_and_audience_type_are_logged(key, keys):
    with pytest.raises(TokenRejected) as info:
        verify(sign(key, claims(iss="https://evil.example")), keys)
    assert info.value.log_fields == {"issuer": "https://evil.example"}
    assert "evil" not in str(info.value)
    # A list of audiences is refused and logged by its type, not its contents.
    with pytest.raises(TokenRejected) as info:
        verify(sign(key, claims(aud=[AUDIENCE])), keys)
    assert info.value.log_fields == {"audience": "list"}


def test_a_logged_claim_is_cut_to_200_characters(key, keys):
    long_email = "a" * 300 + "@evil.example"
    with pytest.raises(TokenRejected) as info:
        verify(sign(key, claims(email=long_email)), keys)
    assert info.value.check == "email_not_allowed"
    assert info.value.log_fields == {"email": "a" * 200}


# --- the key set -----------------------------------------------------------------------------


def _without(jwk: dict, name: str) -> dict:
    return {k: v for k, v in jwk.items() if k != name}


UNUSABLE_JWKS = {
    "an EC key": lambda jwk: {"kty": "EC", "kid": "ec", "crv": "P-256", "x": "AA", "y": "AA"},
    "a symmetric key": lambda jwk: {"kty": "oct", "kid": "hs", "k": "c2VjcmV0"},
    "no kty": lambda jwk: _without(jwk, "kty"),
    "an encryption key": lambda jwk: {**jwk, "use": "enc"},
    "an RS512 key": lambda jwk: {**jwk, "alg": "RS512"},
    "an RSA key marked HS256": lambda jwk: {**jwk, "alg": "HS256"},
    "no modulus n": lambda jwk: _without(jwk, "n"),
    "no exponent e": lambda jwk: _without(jwk, "e"),
    "a modulus that is not base64url": lambda jwk: {**jwk, "n": "!!"},
    "no kid": lambda jwk: _without(jwk, "kid"),
    "an empty kid": lambda jwk: {**jwk, "kid": ""},
    "a numeric kid": lambda jwk: {**jwk, "kid": 7},
    "a kid over 256 characters": lambda jwk: {**jwk, "kid": "k" * (MAX_KID_LEN + 1)},
    "not an object": lambda jwk: "junk",
}


@pytest.mark.parametrize("case", list(UNUSABLE_JWKS))
def test_an_unusable_jwk_is_skipped_and_the_keys_after_it_still_read(case, key, other_key):
    unusable = UNUSABLE_JWKS[case](other_key.jwk())
    # Listed first, it must neither be kept nor hide the usable key listed after it...
    assert list(parse_jwks({"keys": [unusable, key.jwk()]})) == [key.kid]
    # ...and alone it makes the document unusable, so the cache keeps its previous keys.
    with pytest.raises(ValueError):
        parse_jwks({"keys": [unusable]})


def test_use_and_alg_are_optional_in_a_jwk(key, keys):
    # RFC 7517 makes both optional: an RSA key that omits them is an RS256 signing key.
    bare = _without(_without(key.jwk(), "use"), "alg")
    published = parse_jwks({"keys": [bare]})
    assert list(published) == [key.kid]
    assert verify(sign(key, claims()), published).email == SERVICE_ACCOUNT
