"""Mix-minus audio with real Opus (docs/architecture.md §10): tones encoded by the tests go
through a Mixer, and what each listener gets is decoded with PyAV and looked at with an FFT."""

from __future__ import annotations

import numpy as np

from darktower.processing._mixer import JITTER_FRAMES, LATENCY_WINDOW, Mixer

from ._media import Encoded, band_energy, decode_opus, dominant_frequencies, opus_frames

SETTLE = 5  # packets (100 ms) of encoder and decoder start-up left out of the analysis


def tones() -> dict[str, list[Encoded]]:
    return {"low": opus_frames(1.0, 440.0), "high": opus_frames(1.0, 880.0)}


def meeting() -> Mixer[str, str]:
    """Three participants: ``low`` and ``high`` speak, ``quiet`` only listens."""
    mixer: Mixer[str, str] = Mixer()
    for name in ("low", "high"):
        mixer.add_source(name)
        mixer.add_listener(name, own=[name])
    mixer.add_listener("quiet")
    return mixer


def play(mixer: Mixer[str, str], sources: dict[str, list[Encoded]]) -> dict[str, list[bytes]]:
    """One packet of each source, then one tick, for as long as the longest source."""
    heard: dict[str, list[bytes]] = {name: [] for name in mixer.listeners}
    for i in range(max(len(packets) for packets in sources.values())):
        for name, packets in sources.items():
            if i < len(packets):
                mixer.push(name, packets[i].timestamp_us, packets[i].payload)
        for listener, packet in mixer.tick().items():
            heard[listener].append(packet)
    return heard


def pcm(packets: list[bytes]) -> np.ndarray:
    return decode_opus(packets[SETTLE:])


def test_a_listener_hears_both_speakers() -> None:
    heard = play(meeting(), tones())
    samples = pcm(heard["quiet"])
    assert sorted(round(f, -1) for f in dominant_frequencies(samples)) == [440, 880]
    assert band_energy(samples, 440) > 0.3
    assert band_energy(samples, 880) > 0.3


def test_a_speaker_hears_the_other_and_not_itself() -> None:
    heard = play(meeting(), tones())
    low = pcm(heard["low"])
    assert round(dominant_frequencies(low, count=1)[0], -1) == 880
    assert band_energy(low, 880) > 0.9
    assert band_energy(low, 440) < 0.01
    high = pcm(heard["high"])
    assert band_energy(high, 440) > 0.9
    assert band_energy(high, 880) < 0.01


def test_every_listener_gets_one_packet_per_tick() -> None:
    mixer = meeting()
    heard = play(mixer, tones())
    assert {name: len(packets) for name, packets in heard.items()} == {
        "low": 51,
        "high": 51,
        "quiet": 51,
    }
    counters = mixer.counters
    assert counters.ticks == 51
    assert counters.packets_in == 102
    assert counters.encoded == counters.packets_out == 3 * 51
    assert counters.underruns == 0
    assert counters.dropped == {}
    assert counters.cpu_s > 0


def test_a_source_that_stops_is_silence_and_the_mix_goes_on() -> None:
    mixer = meeting()
    sources = tones()
    sources["high"] = sources["high"][:25]  # high stops after half a second
    heard = play(mixer, sources)

    assert len(heard["low"]) == len(heard["quiet"]) == 51
    # What low hears: 880 Hz, then silence once high has stopped.
    low = decode_opus(heard["low"])
    assert band_energy(low[5 * 960 : 20 * 960], 880) > 0.9
    after = low[30 * 960 :].astype(np.float64)
    assert np.sqrt(np.mean(after**2)) < 30  # the tones have an amplitude of 8,000
    assert mixer.counters.underruns == 51 - 25
    # quiet goes on hearing low alone.
    assert band_energy(decode_opus(heard["quiet"])[30 * 960 :], 440) > 0.9


def test_the_jitter_buffer_is_bounded() -> None:
    mixer = meeting()
    packets = opus_frames(0.2, 440.0)[:10]
    for packet in packets:
        mixer.push("low", packet.timestamp_us, packet.payload)
    assert mixer.counters.dropped == {"jitter_full": 10 - JITTER_FRAMES}

    # What is held is played, then low is silence: each tick takes one frame or nothing.
    for _ in range(JITTER_FRAMES + 3):
        assert set(mixer.tick()) == {"low", "high", "quiet"}
    assert mixer.counters.underruns == JITTER_FRAMES + 3 + 3  # high never spoke


def test_a_buffer_that_stays_full_drains_to_keep_the_delay_short() -> None:
    mixer = meeting()
    packets = opus_frames(2.0, 440.0)
    # A burst of three, then one packet per tick: low's buffer holds two frames for good.
    for packet in packets[:3]:
        mixer.push("low", packet.timestamp_us, packet.payload)
    for packet in packets[3 : 3 + LATENCY_WINDOW + 1]:
        mixer.tick()
        mixer.push("low", packet.timestamp_us, packet.payload)
    assert mixer.counters.dropped == {"latency": 1}


def test_listeners_that_hear_the_same_share_one_encoding() -> None:
    mixer = meeting()
    mixer.add_listener("recorder")
    packets = opus_frames(0.1, 440.0)
    for packet in packets[:3]:
        mixer.push("low", packet.timestamp_us, packet.payload)
        out = mixer.tick()
        assert out["recorder"] == out["quiet"]
        assert out["low"] != out["quiet"]
    assert mixer.counters.encoded == 3 * 3  # low's, high's and the shared full mix
    assert mixer.counters.packets_out == 3 * 4


def test_sources_and_listeners_come_and_go() -> None:
    mixer = meeting()
    mixer.remove_listener("quiet")
    mixer.remove_listener("quiet")  # twice is fine
    mixer.remove_source("high")
    assert mixer.listeners == {"low", "high"}
    assert mixer.sources == {"low"}
    packet = opus_frames(0.02, 440.0)[0]
    mixer.push("low", packet.timestamp_us, packet.payload)
    mixer.remove_source("low")
    assert mixer.counters.dropped == {"removed": 1}
    assert set(mixer.tick()) == {"low", "high"}


def test_hostile_packets_are_dropped_and_counted() -> None:
    mixer = meeting()
    good = opus_frames(0.1, 440.0)
    mixer.push("nobody", good[0].timestamp_us, good[0].payload)
    mixer.push("low", good[1].timestamp_us, good[1].payload)
    mixer.push("low", good[0].timestamp_us, good[0].payload)  # older than the last
    mixer.push("low", good[2].timestamp_us, b"\xff\xff\xff")  # not Opus
    mixer.push("low", good[3].timestamp_us, b"")
    mixer.push("low", good[4].timestamp_us, good[4].payload)  # the decoder goes on
    assert mixer.counters.dropped == {"unknown_source": 1, "late": 1, "decode_error": 2}
    assert mixer.counters.packets_in == 6
    assert len(mixer.tick()) == 3 and len(mixer.tick()) == 3
    assert mixer.counters.underruns == 2  # high, twice; low had two frames


def test_a_short_packet_is_carried_into_the_next_frame() -> None:
    mixer = meeting()
    # A 10 ms Opus packet (TOC config 0, one frame) is half a mixing frame: nothing to play
    # from it alone; a second one completes the frame.
    mixer.push("low", 1, b"\x00")
    mixer.tick()
    assert mixer.counters.underruns == 2
    mixer.push("low", 2, b"\x00")
    mixer.tick()
    assert mixer.counters.underruns == 3  # only high's


def test_loud_sources_are_clipped_not_wrapped() -> None:
    mixer: Mixer[str, str] = Mixer()
    names = [f"s{i}" for i in range(5)]
    for name in names:
        mixer.add_source(name)
    mixer.add_listener("everyone")
    # Five in-phase copies of a tone of amplitude 8,000: their sum is beyond int16.
    heard: list[bytes] = []
    for packet in opus_frames(0.5, 440.0):
        for name in names:
            mixer.push(name, packet.timestamp_us, packet.payload)
        heard.extend(mixer.tick().values())
    samples = decode_opus(heard)[SETTLE * 960 :]
    assert np.abs(samples.astype(np.int32)).max() > 30_000
    # Wrapping around would spread energy over the spectrum; clipping keeps most at 440 Hz.
    assert round(dominant_frequencies(samples, count=1)[0], -1) == 440
    assert band_energy(samples, 440) > 0.8
