"""An error answered to a client never quotes a card number (found: the shipped tenant policy's
refusal quotes the tenant a resource claims, and protobuf's JSON parser quotes the value it could
not read; SDKs log the answers they get, to a stdout that nothing masks).

A real sidecar process in enforce mode with the bundled policies; real clients: grpcio and
aiohttp. Every message is read as the client reads it and searched with the tests' own
reference detector."""

from __future__ import annotations

import asyncio
import json
import urllib.parse

import aiohttp
import grpc
import pytest
from google.rpc.status_pb2 import Status as RpcStatus
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from sidecar.masked_text import MAX_CLIENT_MESSAGE, client_message
from tests.conftest import sidecar_env
from tests.processes import SidecarProcess
from tests.rewrite.reference import cards
from tests.upstream import Upstream

PB = {"Content-Type": "application/x-protobuf"}
JS = {"Content-Type": "application/json"}
VISA = "4111 1111 1111 1111"
MASTERCARD = "5555555555554444"
#: full-width digits with ideographic spaces, as an input method types them
WIDE = "\uff14\uff11\uff11\uff11\u3000" + "\u3000".join(["\uff11" * 4] * 3)


def assert_no_card(message: str, *numbers: str) -> None:
    assert message, "an error answer carries a message"
    assert cards(message.encode("utf-8", "surrogatepass")) == [], message
    shown = message.replace(" ", "").replace("\u3000", "").replace("\\u3000", "")
    for number in numbers:
        digits = number.replace(" ", "").replace("\u3000", "")
        assert digits[:6] not in shown, message


def claiming(tenant: str) -> bytes:
    """A logs request whose resource claims ``tenant`` (the pod's is acme)."""
    request = ExportLogsServiceRequest()
    resource = request.resource_logs.add()
    resource.resource.attributes.append(KeyValue(key="tenant.id", value=AnyValue(string_value=tenant)))
    resource.scope_logs.add().log_records.add().body.string_value = "hello"
    return request.SerializeToString()


def json_span(**fields: object) -> bytes:
    span = {"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203331", "name": "checkout",
            **fields}
    return json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}).encode()


@pytest.fixture
async def sidecar():
    upstream = Upstream()
    await upstream.start()
    process = SidecarProcess(sidecar_env(upstream, "grpc", SIDECAR_POLICY_MODE="enforce", SIDECAR_TENANT="acme"))
    ports = await process.start()
    try:
        yield ports
        assert upstream.received == []  # every request here was refused: nothing went upstream
    finally:
        assert await process.stop() == 0
        await upstream.stop()
    for number in (VISA, MASTERCARD):
        assert number.replace(" ", "") not in process.stderr.replace(" ", "")
    assert "Traceback" not in process.stderr


async def post(ports: dict[str, int], path: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"http://127.0.0.1:{ports['http']}{path}", data=body, headers=headers) as response:
            status, payload = response.status, await response.read()
    if headers["Content-Type"] == "application/json":
        return status, json.loads(payload)["message"]
    return status, RpcStatus.FromString(payload).message


@pytest.mark.timeout(60)
@pytest.mark.parametrize("number", [VISA, MASTERCARD, WIDE], ids=["visa-spaced", "mastercard", "full-width"])
async def test_the_tenant_refusal_masks_a_claimed_card_number(sidecar, number) -> None:
    """The policy's reason quotes the claim: 403 over HTTP, PERMISSION_DENIED over gRPC, the
    number masked to its last four digits in both."""
    claim = f"card {number}"
    status, message = await post(sidecar, "/v1/logs", claiming(claim), PB)
    assert status == 403
    assert message.startswith("the resource claims tenant card ") and message.endswith("the pod's tenant is acme")
    assert_no_card(message, number)
    shown = message.removeprefix("the resource claims tenant card ").removesuffix(", the pod's tenant is acme")
    assert len(shown) == len(number) and shown[-4:] == number[-4:]  # masked in place, the last four kept

    with grpc.insecure_channel(f"127.0.0.1:{sidecar['grpc']}") as channel:
        export = channel.unary_unary("/opentelemetry.proto.collector.logs.v1.LogsService/Export",
                                     request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as refused:
            export(claiming(claim), timeout=10)
    assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert refused.value.details() == message


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("body", "number"), [
    (json_span(attributes=[{"key": "n", "value": {"intValue": VISA}}]), VISA),
    (json_span(attributes=[{"key": "n", "value": {"doubleValue": f"card {MASTERCARD}"}}]), MASTERCARD),
    (json_span(startTimeUnixNano=f"card {MASTERCARD}"), MASTERCARD),
    (json_span(spanId=f"{MASTERCARD}zz"), MASTERCARD),
    # repr() writes U+3000 as an escape the detector would not read as a separator
    (json_span(traceId=WIDE), WIDE),
    (json_span(attributes=[{"key": "n", "value": {"intValue": WIDE}}]), WIDE),
    # quoted to 40 characters: masked before the cut, or 12 of its digits would show
    (json_span(traceId="z" * 28 + MASTERCARD), MASTERCARD),
], ids=["intValue", "doubleValue", "timestamp", "span id", "full-width id", "full-width intValue", "cut"])
async def test_a_json_parse_error_masks_the_value_it_quotes(sidecar, body, number) -> None:
    """400 with what could not be read, in the client's format; the value quoted, masked."""
    for headers in (JS, {**JS, "Accept": "application/x-protobuf"}):
        status, message = await post(sidecar, "/v1/traces", body, headers)
        assert status == 400
        assert "must be" in message or "parse" in message or "is not an" in message, message
        assert_no_card(message, number)
        assert "*" in message or "\uff0a" in message


@pytest.mark.timeout(60)
async def test_a_long_quote_is_cut_after_masking(sidecar) -> None:
    """A claim of 4,000 characters: the answer is cut to 1 KiB, and a number the cut splits
    shows none of its first digits (cut first, then masked, would show the eight before it)."""
    prefix = "the resource claims tenant "
    claim = "x" * (MAX_CLIENT_MESSAGE - len(prefix) - 8) + MASTERCARD + "y" * 4000
    status, message = await post(sidecar, "/v1/logs", claiming(claim), PB)
    assert status == 403
    assert len(message.encode()) <= MAX_CLIENT_MESSAGE
    assert message.endswith("********")
    assert_no_card(message, MASTERCARD)


def test_client_message_keeps_text_without_numbers_and_ends_on_whole_characters() -> None:
    assert client_message("the request holds more resources than the 1000 allowed") == (
        "the request holds more resources than the 1000 allowed")
    cut = client_message("é" * 2000)
    assert cut == "é" * (MAX_CLIENT_MESSAGE // 2)
    assert client_message("lone \ud800 surrogate").encode("utf-8")  # encodable: no UnicodeEncodeError


@pytest.mark.timeout(60)
async def test_an_unknown_grpc_encoding_is_quoted_masked(sidecar) -> None:
    """``grpc-encoding`` is the client's text: UNIMPLEMENTED quotes it, masked (a full-width
    number too, which repr() escapes). Sent with h2, a real HTTP/2 client that lets a test set
    any header value (grpcio will not send an encoding it does not know)."""
    import h2.config
    import h2.connection
    import h2.events

    for encoding in (VISA, WIDE):
        reader, writer = await asyncio.open_connection("127.0.0.1", sidecar["grpc"])
        conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding="utf-8", validate_outbound_headers=False))
        conn.initiate_connection()
        conn.send_headers(1, [
            (":method", "POST"), (":scheme", "http"), (":authority", "localhost"),
            (":path", "/opentelemetry.proto.collector.logs.v1.LogsService/Export"),
            ("content-type", "application/grpc"), ("te", "trailers"), ("grpc-encoding", encoding),
        ])
        conn.send_data(1, b"\x01\x00\x00\x00\x01x", end_stream=True)
        writer.write(conn.data_to_send())
        fields: dict[str, str] = {}
        ended = False
        async with asyncio.timeout(10):
            while not ended:
                data = await reader.read(65536)
                assert data, "the sidecar closed the connection without an answer"
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                        fields.update(event.headers)
                    ended = ended or isinstance(event, h2.events.StreamEnded | h2.events.StreamReset)
                writer.write(conn.data_to_send())
        writer.close()
        assert fields.get("grpc-status") == "12", fields  # UNIMPLEMENTED
        message = urllib.parse.unquote(fields["grpc-message"])
        assert message.startswith("unsupported encoding"), message
        assert_no_card(message, encoding)
