"""Options of ``python -m darktower.loadtest`` (flags, ``DARKTOWER_*`` variables, ``--config``),
read with the launchers' :mod:`darktower.config`, then checked as a whole."""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping, Sequence

import attrs

from darktower.client import RESUME_GRACE_S
from darktower.config import ConfigError, load, option

from ._limits import MAX_PARTICIPANTS_PER_MEETING, MAX_PROCESSES, MAX_TOTAL_PARTICIPANTS

PROG = "python -m darktower.loadtest"
DESCRIPTION = (
    "Load tester: creates meetings on a running Dark Tower, joins synthetic participants that "
    "publish video and audio and subscribe to everyone else, runs for a while and prints join "
    "latency, frames delivered, drops, delivery latency and errors. Exit status 0 when there "
    "was no error and frames were delivered, 1 otherwise, 2 when the target cannot be used."
)
DEFAULT_PAGE_URL = "http://127.0.0.1:8080/"
DEV_API_PORT = 8443  # python -m darktower's --api-port default
MAX_VIDEO_KBPS = 20_000  # a key frame stays under the MH's 1 MiB payload limit


@attrs.frozen
class LoadTestSettings:
    meetings: int = option(1, "meetings to create")
    participants: int = option(3, "participants joining each meeting")
    duration: float = option(10.0, "seconds of media once everyone has joined")
    url: str = option(
        DEFAULT_PAGE_URL,
        "page URL of `python -m darktower`: its dev credential and certificate hash are "
        "fetched from there",
    )
    api: str = option(
        "",
        "GC API base URL (https://HOST:PORT). With --client-id/--client-secret: a real "
        f"deployment, --url unused. Empty: https://<host of --url>:{DEV_API_PORT}",
    )
    client_id: str = option("", "client credential id (empty: the dev stack's, from --url)")
    client_secret: str = option("", "client credential secret (empty: the dev stack's)")
    cert_sha256: str = option(
        "",
        "hex SHA-256 of the servers' certificate to pin (empty: the dev stack's from --url, "
        "or the system CAs for a deployment given with --api and credentials)",
    )
    publishers: int = option(-1, "participants per meeting that publish (-1: all)")
    video_kbps: int = option(
        400, "video per publisher, kbit/s: 30 fps, a key frame every 2 s (0: no video)"
    )
    audio: bool = option(True, "publish audio too: 50 fps of 120 bytes")
    json: bool = option(
        False, "stdout gets only the summary as one JSON line (the text summary goes to stderr)"
    )
    json_file: str = option("", "also write the summary JSON to this file")
    join_concurrency: int = option(10, "joins in progress at once")
    setup_timeout: float = option(
        120.0, "seconds allowed for creating meetings, joining and subscribing"
    )
    connect_timeout: float = option(10.0, "seconds to reach the target before giving up")
    resume_grace: float = option(
        RESUME_GRACE_S,
        "seconds a participant tries to get a lost connection back before it counts as failed "
        "(0: never; reconnections and their time to recover are in the summary)",
    )
    progress: bool = option(True, "live progress line on stderr (one line per second if no TTY)")
    processes: int = option(
        1, "load tester processes; the meetings are shared out among them (one per core)"
    )
    worker: bool = option(False, "internal: run as one of --processes (JSON lines on stdout)")

    @property
    def publishers_per_meeting(self) -> int:
        return self.participants if self.publishers < 0 else self.publishers

    @property
    def dev_stack(self) -> bool:
        """True unless a deployment is named in full (--api and a credential)."""
        return not (self.api and self.client_id and self.client_secret)

    @property
    def api_url(self) -> str:
        if self.api:
            return self.api.rstrip("/")
        host = urllib.parse.urlsplit(self.url).hostname or "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        return f"https://{host}:{DEV_API_PORT}"

    @property
    def target(self) -> str:
        return self.url if self.dev_stack else self.api_url


def validate(settings: LoadTestSettings) -> LoadTestSettings:
    """Raise :class:`ConfigError` naming the option when the options cannot make a run."""
    s = settings
    if s.meetings < 1:
        raise ConfigError("--meetings must be at least 1")
    if not 1 <= s.participants <= MAX_PARTICIPANTS_PER_MEETING:
        raise ConfigError(f"--participants must be 1 to {MAX_PARTICIPANTS_PER_MEETING}")
    if s.meetings * s.participants > MAX_TOTAL_PARTICIPANTS:
        raise ConfigError(
            f"--meetings x --participants must be at most {MAX_TOTAL_PARTICIPANTS} "
            "(run several load testers instead)"
        )
    if not s.duration > 0:
        raise ConfigError("--duration must be positive")
    if s.publishers < -1 or s.publishers > s.participants:
        raise ConfigError("--publishers must be -1 (all) or 0 to --participants")
    if not 0 <= s.video_kbps <= MAX_VIDEO_KBPS:
        raise ConfigError(f"--video-kbps must be 0 to {MAX_VIDEO_KBPS}")
    if not 1 <= s.processes <= MAX_PROCESSES:
        raise ConfigError(f"--processes must be 1 to {MAX_PROCESSES}")
    if s.join_concurrency < 1:
        raise ConfigError("--join-concurrency must be at least 1")
    if not s.setup_timeout > 0 or not s.connect_timeout > 0:
        raise ConfigError("--setup-timeout and --connect-timeout must be positive")
    if not s.resume_grace >= 0:
        raise ConfigError("--resume-grace must be 0 or more")
    if bool(s.client_id) != bool(s.client_secret):
        raise ConfigError("--client-id and --client-secret go together")
    for name, url, schemes in (("--url", s.url, ("http", "https")), ("--api", s.api, ("https",))):
        if not url:
            continue
        split = urllib.parse.urlsplit(url)
        if split.scheme not in schemes or not split.hostname:
            raise ConfigError(f"{name} must be an {' or '.join(schemes)} URL, got {url!r}")
    if s.cert_sha256:
        try:
            if len(bytes.fromhex(s.cert_sha256)) != 32:
                raise ValueError
        except ValueError:
            raise ConfigError("--cert-sha256 must be 64 hex digits") from None
    return settings


def parse_args(
    argv: Sequence[str] | None = None, *, environ: Mapping[str, str] | None = None
) -> LoadTestSettings:
    """Read and check the options. Raises ConfigError; argparse exits 2 on unknown flags."""
    return validate(
        load(LoadTestSettings, argv, prog=PROG, description=DESCRIPTION, environ=environ)
    )
