"""The run-wide detector of an unreachable GitLab (app/gitlab/reachability.py): its rules,
and how it reads an HTTP library's exception. No I/O: real wires are exercised in
tests/integration/test_gitlab_unreachable.py."""

from __future__ import annotations

import errno
import socket
import ssl

import httpx
import pytest

from app.gitlab.errors import GitLabUnreachable
from app.gitlab.reachability import (
    ReachabilityDetector,
    classify_connect_failure,
    instance_label,
)

URL = "https://gitlab.example.com"


def detector(threshold: int = 3, url: str = URL) -> ReachabilityDetector:
    return ReachabilityDetector(threshold, url)


# --- counting -----------------------------------------------------------------------------


def test_trips_on_the_threshold_th_failure_in_a_row_and_reports_it_once() -> None:
    d = detector(3)
    assert [d.connect_failed("connection_refused") for _ in range(5)] == [
        False,
        False,
        True,  # the third trips the run...
        False,  # ...and later ones say nothing new
        False,
    ]
    assert d.tripped


def test_an_answer_resets_the_count() -> None:
    d = detector(3)
    d.connect_failed("connection_refused")
    d.connect_failed("connection_refused")
    d.answered()  # any status: the host answered
    assert not d.connect_failed("connection_refused")
    assert not d.connect_failed("connection_refused")
    assert not d.tripped
    assert d.connect_failed("connection_refused")


def test_failures_of_every_kind_count_together() -> None:
    d = detector(4)
    for kind in ("connection_refused", "dns_failure", "tls_failure"):
        assert not d.connect_failed(kind)  # type: ignore[arg-type]
    assert d.connect_failed("no_route")
    assert "no route to the host" in d.describe()  # the last cause is the one named


def test_the_trip_is_final_for_the_run() -> None:
    d = detector(1)
    assert d.connect_failed("dns_failure")
    d.answered()  # a late answer from a request sent before the trip
    assert d.tripped
    with pytest.raises(GitLabUnreachable):
        d.check("/projects/1/issues")


def test_check_passes_until_tripped_then_refuses_every_request() -> None:
    d = detector(2)
    d.check("/projects/1/issues")
    d.connect_failed("tls_failure")
    d.check("/projects/1/issues")
    d.connect_failed("tls_failure")
    with pytest.raises(GitLabUnreachable) as info:
        d.check("/projects/7/merge_requests")
    assert info.value.endpoint == "/projects/7/merge_requests"
    assert info.value.status is None
    assert str(info.value).startswith(
        "GitLab at https://gitlab.example.com cannot be reached: TLS handshake failed "
        "(2 requests in a row)"
    )


def test_a_threshold_below_one_is_one() -> None:
    d = detector(0)
    assert d.connect_failed("connection_refused")
    assert d.describe().endswith("connection refused (1 request)")


@pytest.mark.parametrize(
    ("kind", "text"),
    [
        ("connection_refused", "connection refused"),
        ("dns_failure", "DNS lookup failed"),
        ("tls_failure", "TLS handshake failed"),
        ("no_route", "no route to the host"),
    ],
)
def test_describe_names_the_host_and_why(kind, text) -> None:
    d = detector(5, "http://127.0.0.1:9")
    d.connect_failed(kind)
    assert (
        d.describe()
        == f"GitLab at http://127.0.0.1:9 cannot be reached: {text} (5 requests in a row)"
    )


# --- the host, never more -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "label"),
    [
        ("https://gitlab.example.com", "https://gitlab.example.com"),
        ("https://gitlab.example.com/gitlab/sub", "https://gitlab.example.com"),
        (
            "https://user:s3cret@gitlab.example.com:8443/x?private_token=abc",
            "https://gitlab.example.com:8443",
        ),
        ("http://[::1]:8080", "http://[::1]:8080"),
        ("http://GitLab.Example.com", "http://gitlab.example.com"),
    ],
)
def test_instance_label_is_scheme_host_and_port_only(url, label) -> None:
    assert instance_label(url) == label
    d = detector(1, url)
    d.connect_failed("connection_refused")
    for secret in ("s3cret", "user:", "private_token", "/sub", "/x"):
        assert secret not in d.describe()


# --- reading exceptions -------------------------------------------------------------------


def caused(outer: BaseException, cause: BaseException) -> BaseException:
    outer.__cause__ = cause
    return outer


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), "connection_refused"),
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), "dns_failure"),
        (ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"), "tls_failure"),
        (ssl.SSLCertVerificationError(1, "certificate verify failed"), "tls_failure"),
        (OSError(errno.EHOSTUNREACH, "No route to host"), "no_route"),
        (OSError(errno.ENETUNREACH, "Network is unreachable"), "no_route"),
        # httpx: ConnectError <- httpcore.ConnectError <- the OS error
        (
            caused(httpx.ConnectError("x"), caused(OSError("x"), ConnectionRefusedError())),
            "connection_refused",
        ),
        (caused(httpx.ConnectError("x"), socket.gaierror(-2, "x")), "dns_failure"),
        (caused(httpx.ConnectError("x"), ssl.SSLError(1, "x")), "tls_failure"),
    ],
)
def test_connection_failures_are_recognised_through_their_causes(exc, kind) -> None:
    assert classify_connect_failure(exc) == kind


class _AiohttpLike(Exception):
    """aiohttp's ClientConnectorError keeps the OS error in `os_error`."""

    def __init__(self, os_error: OSError) -> None:
        self.os_error = os_error
        super().__init__("connector")


def test_an_aiohttp_style_os_error_attribute_is_read() -> None:
    assert classify_connect_failure(_AiohttpLike(ConnectionRefusedError())) == (
        "connection_refused"
    )


@pytest.mark.parametrize(
    "exc",
    [
        TimeoutError(),
        httpx.ReadTimeout("slow"),
        httpx.ConnectTimeout("slow to accept"),  # could be a flooded GitLab: not counted
        ConnectionResetError(errno.ECONNRESET, "reset"),
        httpx.RemoteProtocolError("peer closed connection"),
        OSError(errno.EPIPE, "broken pipe"),
    ],
)
def test_failures_that_prove_nothing_about_reachability_are_none(exc) -> None:
    assert classify_connect_failure(exc) is None


def test_a_cause_cycle_ends() -> None:
    a, b = RuntimeError("a"), RuntimeError("b")
    a.__cause__, b.__cause__ = b, a
    assert classify_connect_failure(a) is None
