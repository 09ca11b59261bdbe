"""The qh3 internals ``darktower/transport/_quic_qh3.py`` reads or overrides still exist in the
installed qh3 (the qh3 counterpart of tests/test_library_hooks.py; skipped without qh3).
After a qh3 upgrade a failure names the hook to port; only then move the pin in
pyproject.toml."""

from __future__ import annotations

import importlib.metadata
import inspect

import pytest

qh3_connection = pytest.importorskip("qh3.quic.connection")

from qh3.h3.connection import H3Connection, Setting  # noqa: E402
from qh3.quic.configuration import QuicConfiguration  # noqa: E402

from darktower.transport import generate_dev_certificate  # noqa: E402
from darktower.transport._quic_qh3 import Qh3Connection, Qh3H3Connection  # noqa: E402

FACADE = (
    "_core",
    "_is_client",
    "_handshake_complete",
    "_close_event",
    "_configuration",
    "_created_local_stream_ids",
    "_remote_max_datagram_frame_size",
    "_local_next_stream_id_uni",
    "_tls",
    "_learn_remote_source_cid",
)
CORE = (
    "get_timer",
    "active_path",
    "stream_limits",
    "loss_total",
    "pto_total",
    "smoothed_rtt",
    "latest_rtt",
    "congestion_window",
    "bytes_in_flight",
    "local_error",
)


def _client() -> Qh3Connection:
    config = QuicConfiguration(is_client=True, alpn_protocols=["h3"], server_name="localhost")
    quic = Qh3Connection(configuration=config, consumed=lambda _sid: None, window=65536)
    quic.connect(("127.0.0.1", 4433), now=0.0)
    return quic


def _why() -> str:
    return f"qh3 {importlib.metadata.version('qh3')}: port _quic_qh3.py"


def test_facade_and_core_attributes() -> None:
    quic = _client()
    missing = [name for name in FACADE if not hasattr(quic, name)]
    missing += [f"core.{name}" for name in CORE if not hasattr(quic._core, name)]
    assert not missing, f"{_why()} (missing {missing})"
    assert isinstance(quic._core.stream_limits, tuple) and len(quic._core.stream_limits) == 4
    assert len(quic._core.active_path) == 6
    kind, deadline = quic._core.get_timer()
    assert isinstance(kind, str) and isinstance(deadline, float)


def test_header_parser_reports_the_packet_end() -> None:
    # _quic_qh3.receive_datagram swaps this module global for one call; [9] is the packet end.
    datagram = _client().datagrams_to_send(now=0.0)[0][0]
    header = qh3_connection._pull_quic_header(datagram, 0, 8)
    assert 0 < header[9] <= len(datagram), _why()


def test_finished_streams_are_discarded_from_the_local_set() -> None:
    # _FinishedStreams relies on the core's stream_finished event calling .discard on it.
    source = inspect.getsource(qh3_connection.QuicConnection)
    assert "self._created_local_stream_ids.discard(" in source, _why()


def test_h3_settings_hook() -> None:
    quic = _client()
    h3 = Qh3H3Connection(quic, enable_webtransport=True)
    assert hasattr(h3, "_stream"), _why()
    assert hasattr(H3Connection, "_get_local_settings"), _why()
    assert h3._get_local_settings()[Setting.ENABLE_CONNECT_PROTOCOL] == 1


def test_native_crypto_warm_up() -> None:
    # _quic_qh3.warm_up makes one key exchange when the qh3 core is loaded.
    from darktower.transport._quic_qh3 import warm_up

    warm_up()


def test_pem_credentials_load() -> None:
    cert = generate_dev_certificate()
    config = QuicConfiguration(is_client=False)
    config.load_cert_chain(cert.certificate_pem, cert.private_key_pem)
    assert config.certificate is not None and config.private_key is not None
