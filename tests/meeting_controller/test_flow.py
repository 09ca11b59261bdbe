"""The whole join -> publish -> subscribe -> quality -> leave flow, over real QUIC."""

from __future__ import annotations

import pathlib

import trio

from darktower.errors import NotFound
from darktower.model import Role
from darktower.protocol.pb.v1 import common_pb2
from darktower.protocol.pb.v1 import media_control_pb2 as mh_pb
from darktower.protocol.pb.v1 import signaling_pb2 as sig

from ._harness import next_event, open_stack


async def test_join_publish_subscribe_quality_leave(tmp_path: pathlib.Path) -> None:
    async with open_stack(tmp_path) as stack:
        await stack.assign("m1", display_name="standup", max_participants=10)
        async with stack.join("m1", Role.HOST, name="Ada") as host:
            assert host.join_response.existing_participants == []
            assert (
                host.join_response.media_server.connection_token == f"token-{host.participant_id}"
            )
            assert not host.join_response.HasField("encryption_keys")
            async with stack.join("m1", name="Bob") as bob:
                existing = bob.join_response.existing_participants
                assert [(p.participant_id, p.name) for p in existing] == [
                    (host.participant_id, "Ada")
                ]
                joined = await next_event(host, "participant_joined")
                assert joined.participant_joined.participant.name == "Bob"

                # publish with simulcast layers: the others see the stream and its layers
                layers = [common_pb2.SimulcastLayer(layer_id="L-low", width=320, height=180)]
                metadata = common_pb2.StreamMetadata(
                    codec="VP9", video=common_pb2.VideoMetadata(width=1280, simulcast_layers=layers)
                )
                reply = await host.request(
                    sig.ClientMessage(
                        publish=sig.PublishStream(
                            stream_id="cam", stream_type=common_pb2.VIDEO_CAMERA, metadata=metadata
                        )
                    )
                )
                assert reply.ack.stream_id == "cam"
                published = await next_event(bob, "stream_published")
                assert published.stream_published.participant_id == host.participant_id
                assert (
                    published.stream_published.stream.metadata.video.simulcast_layers[0].layer_id
                    == "L-low"
                )

                # subscribe -> RouteMedia with the preferred layer and bitrate
                options = sig.SubscriptionOptions(preferred_layer="L-low", max_bitrate=300_000)
                await bob.request(
                    sig.ClientMessage(
                        subscribe=sig.SubscribeStream(stream_id="cam", options=options)
                    )
                )
                route = stack.mh.routes[-1]
                assert route.source_stream_id == "cam" and route.meeting_id == "m1"
                assert list(route.destination_participant_ids) == [bob.participant_id]
                assert route.options.preferred_layer == "L-low"
                assert route.options.target_bitrate == 300_000 and not route.unroute

                # a client's quality report becomes a RouteMedia options update
                await bob.request(
                    sig.ClientMessage(
                        quality=sig.StreamQualityUpdate(stream_id="cam", available_bitrate=150_000)
                    )
                )
                assert stack.mh.routes[-1].options.target_bitrate == 150_000
                assert stack.mh.routes[-1].options.preferred_layer == "L-low"
                # ... within the subscription's own max_bitrate; a report without a bitrate
                # (loss and RTT only) leaves that cap
                for reported in (900_000, 0):
                    await bob.request(
                        sig.ClientMessage(
                            quality=sig.StreamQualityUpdate(
                                stream_id="cam", available_bitrate=reported, rtt_ms=30
                            )
                        )
                    )
                    assert stack.mh.routes[-1].options.target_bitrate == 300_000

                # MH estimates -> quality updates: a subscriber's to it, a stream's feedback
                # to its publisher, the speakers to everyone (docs/protocol.md §17)
                with trio.fail_after(10):
                    await stack.mh.telemetry_subscribed.wait()
                await stack.mh.telemetry_send.send(
                    mh_pb.TelemetryEvent(
                        meeting_id="m1",
                        subscriber_quality=mh_pb.SubscriberQuality(
                            participant_id=bob.participant_id,
                            stream_id="cam",
                            available_bitrate=123_000,
                            rtt_ms=40,
                            packet_loss=0.25,
                            layer_id="L-low",
                        ),
                    )
                )
                update = await next_event(bob, "quality")
                assert update.quality == sig.StreamQualityUpdate(
                    stream_id="cam",
                    available_bitrate=123_000,
                    rtt_ms=40,
                    packet_loss=0.25,
                    layer_id="L-low",
                )
                layers = [common_pb2.LayerFeedback(layer_id="L-low", active=True, subscribers=1)]
                await stack.mh.telemetry_send.send(
                    mh_pb.TelemetryEvent(
                        meeting_id="m1",
                        publisher_feedback=mh_pb.PublisherFeedback(
                            stream_id="cam", available_bitrate=123_000, layers=layers
                        ),
                    )
                )
                update = await next_event(host, "quality")
                assert update.quality.stream_id == "cam"
                assert list(update.quality.layers) == layers
                await stack.mh.telemetry_send.send(
                    mh_pb.TelemetryEvent(
                        meeting_id="m1",
                        active_speakers=mh_pb.SpeakerList(
                            participant_ids=[host.participant_id, "not-a-member"]
                        ),
                    )
                )
                for client in (host, bob):
                    update = await next_event(client, "active_speakers")
                    assert list(update.active_speakers.participant_ids) == [host.participant_id]
                # one who joins later is told who speaks now
                async with stack.join("m1", name="Cy") as cy:
                    cy_id = cy.participant_id
                    update = await next_event(cy, "active_speakers")
                    assert list(update.active_speakers.participant_ids) == [host.participant_id]
                # (Cy's leave reaches the host first, so that the leave awaited below is Bob's)
                cy_left = await next_event(host, "participant_left")
                assert cy_left.participant_left.participant_id == cy_id
                # key-frame requests from the MH reach the publisher
                await stack.mh.telemetry_send.send(
                    mh_pb.TelemetryEvent(
                        meeting_id="m1",
                        key_frame_request=common_pb2.KeyFrameRequest(stream_id="cam"),
                    )
                )
                assert (
                    await next_event(host, "key_frame_request")
                ).key_frame_request.stream_id == "cam"

                pong = await bob.request(sig.ClientMessage(ping=sig.Ping(timestamp=42)))
                assert pong.pong.timestamp == 42

                await bob.request(
                    sig.ClientMessage(unsubscribe=sig.UnsubscribeStream(stream_id="cam"))
                )
                assert stack.mh.routes[-1].unroute
                try:
                    await bob.request(
                        sig.ClientMessage(unsubscribe=sig.UnsubscribeStream(stream_id="cam"))
                    )
                except NotFound:
                    pass
                else:
                    raise AssertionError("a second unsubscribe must be NOT_FOUND")

                await host.request(
                    sig.ClientMessage(unpublish=sig.UnpublishStream(stream_id="cam"))
                )
                gone = await next_event(bob, "stream_unpublished")
                assert gone.stream_unpublished.stream_id == "cam"

                ended = await bob.leave()
                assert ended is not None and ended.reason == common_pb2.VOLUNTARY
            left = await next_event(host, "participant_left")
            assert left.participant_left.participant_id == bob.participant_id
            assert left.participant_left.reason == common_pb2.VOLUNTARY
            await stack.mh.wait_for(
                lambda: any(r.participant_id == bob.participant_id for r in stack.mh.removed)
            )
            assert {r.participant_id for r in stack.mh.registered} == {
                host.participant_id,
                bob.participant_id,
                cy_id,
            }
        # the server's drain at the end of the stack: nothing left in the tree
    assert stack.running.controller.tree.snapshot()["counts"]["participants"] == 0


async def test_e2ee_keys_and_key_share_relay(tmp_path: pathlib.Path) -> None:
    async with open_stack(tmp_path) as stack:
        await stack.assign("secret", enable_e2e_encryption=True)
        async with stack.join("secret", e2ee_public_key=b"A" * 32) as a:
            assert a.join_response.encryption_keys.public_key == b"A" * 32
            assert a.join_response.encryption_keys.key_id == "1"
            async with stack.join("secret", e2ee_public_key=b"B" * 32) as b:
                assert b.join_response.encryption_keys.key_id == "2"
                (peer,) = b.join_response.existing_participants
                assert peer.public_key == b"A" * 32 and peer.key_id == "1"
                share = sig.E2EEKeyShare(
                    from_participant_id="someone-else",
                    to_participant_id=a.participant_id,
                    key_id="2",
                    ciphertext=b"\x01\x02opaque",
                )
                await b.request(sig.ClientMessage(key_share=share))
                relayed = await next_event(a, "key_share")
                assert relayed.key_share.ciphertext == b"\x01\x02opaque"
                assert relayed.key_share.from_participant_id == b.participant_id
            left = await next_event(a, "participant_left")
            assert left.participant_left.reason == common_pb2.VOLUNTARY  # b closed its session
