"""Options of ``python -m darktower.loadtest``: parsing, checks, and errors without tracebacks."""

from __future__ import annotations

import socket

import pytest

from darktower.config import ConfigError
from darktower.loadtest import LoadTestSettings, parse_args
from darktower.loadtest.__main__ import EXIT_UNUSABLE, main


def _parse(*argv: str) -> LoadTestSettings:
    return parse_args(list(argv), environ={})


def test_defaults_target_the_local_dev_stack() -> None:
    s = _parse()
    assert s.url == "http://127.0.0.1:8080/"
    assert s.dev_stack
    assert s.api_url == "https://127.0.0.1:8443"
    assert s.publishers_per_meeting == s.participants
    assert s.audio and not s.json


def test_the_issue_s_flags() -> None:
    s = _parse(
        "--meetings", "4", "--participants", "6", "--duration", "2.5",
        "--publishers", "2", "--video-kbps", "800", "--no-audio", "--json",
        "--json-file", "/tmp/x.json", "--join-concurrency", "3",
    )  # fmt: skip
    assert (s.meetings, s.participants, s.duration) == (4, 6, 2.5)
    assert s.publishers_per_meeting == 2
    assert s.video_kbps == 800 and not s.audio
    assert s.json and s.json_file == "/tmp/x.json"
    assert s.join_concurrency == 3


def test_dev_api_follows_the_page_host() -> None:
    assert _parse("--url", "http://[::1]:8080/").api_url == "https://[::1]:8443"
    assert _parse("--api", "https://127.0.0.1:9443/").api_url == "https://127.0.0.1:9443"


def test_a_deployment_is_named_in_full() -> None:
    s = _parse("--api", "https://gc.example:8443", "--client-id", "a", "--client-secret", "b")
    assert not s.dev_stack
    assert s.target == "https://gc.example:8443"


def test_environment_and_flags() -> None:
    s = parse_args(
        ["--duration", "3"], environ={"DARKTOWER_MEETINGS": "5", "DARKTOWER_DURATION": "9"}
    )
    assert s.meetings == 5 and s.duration == 3  # flags win over the environment


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["--meetings", "0"], "--meetings"),
        (["--participants", "0"], "--participants"),
        (["--participants", "101"], "--participants"),
        (["--meetings", "100", "--participants", "100"], "--meetings x --participants"),
        (["--duration", "0"], "--duration"),
        (["--participants", "3", "--publishers", "4"], "--publishers"),
        (["--video-kbps", "-1"], "--video-kbps"),
        (["--join-concurrency", "0"], "--join-concurrency"),
        (["--client-id", "x"], "--client-id and --client-secret"),
        (["--url", "ftp://x/"], "--url"),
        (["--api", "http://127.0.0.1:8443"], "--api"),
        (["--cert-sha256", "abcd"], "--cert-sha256"),
        (["--meetings", "many"], "meetings"),
    ],
)
def test_bad_options_name_the_option(argv: list[str], names: str) -> None:
    with pytest.raises(ConfigError, match=names.replace("+", r"\+")):
        _parse(*argv)


def test_bad_option_exits_2_without_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--meetings", "0"]) == EXIT_UNUSABLE
    err = capsys.readouterr().err
    assert "error: --meetings must be at least 1" in err
    assert "Traceback" not in err


def _free_port(kind: socket.SocketKind) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_page_url_that_does_not_answer_is_a_clear_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    port = _free_port(socket.SOCK_STREAM)
    assert main(["--url", f"http://127.0.0.1:{port}/", "--no-progress"]) == EXIT_UNUSABLE
    captured = capsys.readouterr()
    assert f"error: cannot reach http://127.0.0.1:{port}/api/v1/dev/credentials" in captured.err
    assert "Is `python -m darktower` running there?" in captured.err
    assert "Traceback" not in captured.err
    assert captured.out == ""


def test_an_api_that_does_not_answer_is_a_clear_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A UDP socket that reads nothing and answers nothing: the QUIC handshake never completes.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        argv = [
            "--api", f"https://127.0.0.1:{port}", "--client-id", "x", "--client-secret", "y",
            "--connect-timeout", "0.5", "--no-progress",
        ]  # fmt: skip
        assert main(argv) == EXIT_UNUSABLE
    err = capsys.readouterr().err
    assert f"error: no answer from the API at https://127.0.0.1:{port} within 0.5 s" in err
    assert "Traceback" not in err
