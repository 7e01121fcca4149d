"""Cairn's API from Python, against a running agent: frames built and opened here (zstd and
LZ4 frame, CRC32C), Kafka's murmur2 partitioner, idempotent retries, conditional appends
and the errors a client acts on (google.rpc.ErrorInfo in grpc-status-details-bin).

    python tests/python/test_client.py [ADDRESS] [--topic-prefix PREFIX]

ADDRESS is the agent's gRPC endpoint (http://127.0.0.1:PORT or 127.0.0.1:PORT), else the
CAIRN_ENDPOINT environment variable. Exits non-zero if any check fails. Topics are named
PREFIX-... (a random prefix by default) so runs against a shared agent do not collide;
tests/tests/python_client.rs reads the round-trip topics back with the Rust client.
Needs the packages pinned in tests/python/requirements.txt.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time
import traceback

import grpc

import cairn_client as cc
from cairn_client import Rec

PARTITIONS = 3


def check(cond: bool, what: str) -> None:
    if not cond:
        raise AssertionError(what)


def eq(got, want, what: str) -> None:
    if got != want:
        raise AssertionError(f"{what}: got {got!r}, want {want!r}")


def expect_error(call) -> cc.CairnError:
    try:
        resp = call()
    except grpc.RpcError as err:
        return cc.error_of(err)
    raise AssertionError(f"the call succeeded ({resp}) but should have failed")


def sample_records(n: int, base_ts: int) -> list[Rec]:
    """Keyed and keyless records with headers (repeated names, binary and empty values) and
    timestamps out of order."""
    recs = []
    for i in range(n):
        headers = [("i", str(i).encode()), ("bin", bytes([0, 255, i % 256]))]
        if i % 4 == 0:
            headers.append(("i", b"again"))  # repeated names keep their order
        if i % 5 == 0:
            headers.append(("empty", b""))
        recs.append(
            Rec(
                value=(f"value {i} " + "z" * (i * 13 % 200)).encode(),
                key=b"" if i % 7 == 3 else f"key-{i % 11}".encode(),
                headers=headers,
                timestamp_ms=base_ts + (i * 37) % 101,
            )
        )
    return recs


def same_records(got: list[Rec], want: list[Rec], what: str) -> None:
    eq(len(got), len(want), f"{what}: record count")
    for i, (g, w) in enumerate(zip(got, want)):
        eq((g.key, g.value, g.headers, g.timestamp_ms), (w.key, w.value, w.headers, w.timestamp_ms), f"{what}: record {i}")


# ---------------------------------------------------------------------------------------


def test_murmur2_matches_kafka(client: cc.Client, prefix: str) -> None:
    # Kafka's UtilsTest.testMurmur2 vectors (signed 32-bit in Java).
    cases = {
        b"21": -973932308,
        b"foobar": -790332482,
        b"a-little-bit-long-string": -985981536,
        b"a-little-bit-longer-string": -1486304829,
        b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
        b"abc": 479470107,
    }
    for key, want in cases.items():
        eq(cc.murmur2(key), want & 0xFFFFFFFF, f"murmur2({key!r})")
    # Kafka's DefaultPartitioner: toPositive(murmur2(key)) % partitions.
    eq(cc.partition_for_key(b"foobar", 7), (-790332482 & 0x7FFFFFFF) % 7, "partition of foobar")


def round_trip(client: cc.Client, prefix: str, codec: int, name: str) -> None:
    rpb = client.records
    topic = f"{prefix}-roundtrip-{name}"
    client.create_topic(topic, PARTITIONS)
    base_ts = int(time.time() * 1000) - 60_000

    # Two produce calls, each one frame per partition the partitioner picks.
    sent: dict[int, list[Rec]] = {p: [] for p in range(PARTITIONS)}
    payloads: dict[tuple[int, int], bytes] = {}
    for round_no in range(2):
        recs = sample_records(40, base_ts + round_no * 1000)
        by_partition: dict[int, list[Rec]] = {}
        for i, r in enumerate(recs):
            # Keyless records go round-robin (api.proto's partitioner comment).
            p = cc.partition_for_key(r.key, PARTITIONS) if r.key else i % PARTITIONS
            by_partition.setdefault(p, []).append(r)
        frames = {p: cc.build_frame(rs, codec) for p, rs in sorted(by_partition.items())}
        for f in frames.values():
            eq(f.header.codec, codec, "frame codec")
            if codec == rpb.CODEC_ZSTD:
                eq(f.payload[:4], bytes.fromhex("28b52ffd"), "zstd frame magic")
            elif codec == rpb.CODEC_LZ4_FRAME:
                eq(f.payload[:4], bytes.fromhex("04224d18"), "LZ4 frame magic")
        resp = client.produce([client.batch(topic, p, f) for p, f in frames.items()])
        eq(len(resp.results), len(frames), "one result per batch")
        for res, (p, f) in zip(resp.results, frames.items()):
            check(not res.HasField("error"), f"batch to {p} failed: {res.error}")
            eq((res.topic, res.partition), (topic, p), "result's topic-partition")
            eq(res.record_count, len(by_partition[p]), "result's record_count")
            eq(res.base_offset, len(sent[p]), f"base offset in partition {p}")
            check(not res.duplicate, "a first send is no duplicate")
            payloads[(p, res.base_offset)] = f.payload
            sent[p].extend(by_partition[p])

    for p in range(PARTITIONS):
        got, hwm = client.read_partition(topic, p)
        eq(hwm, len(sent[p]), f"high watermark of partition {p}")
        eq([r.offset for r in got], list(range(len(sent[p]))), f"offsets of partition {p}")
        same_records(got, sent[p], f"partition {p}")
        # The agent stores frames as they came: same payload bytes, same header, plus its
        # append time.
        resp = client.fetch(topic, p, 0)
        for f in resp.frames:
            eq(f.payload, payloads[(p, f.base_offset)], "stored payload bytes")
            eq(f.header.codec, codec, "stored codec")
            eq(f.header.timestamp_type, rpb.TIMESTAMP_TYPE_CREATE_TIME, "stored timestamp type")
            check(f.header.append_time_ms > 0, "the agent sets append_time_ms")
        # Fetching from the middle: frames come whole, the client skips what is before.
        if len(sent[p]) > 2:
            mid = len(sent[p]) // 2 + 1
            got, _ = client.read_partition(topic, p, mid)
            eq([r.offset for r in got], list(range(mid, len(sent[p]))), "offsets read from the middle")
            same_records(got, sent[p][mid:], f"partition {p} from {mid}")
    check(all(sent[p] for p in range(PARTITIONS)), "every partition got records")


def test_round_trip_zstd(client: cc.Client, prefix: str) -> None:
    round_trip(client, prefix, client.records.CODEC_ZSTD, "zstd")


def test_round_trip_lz4(client: cc.Client, prefix: str) -> None:
    round_trip(client, prefix, client.records.CODEC_LZ4_FRAME, "lz4")


def test_idempotent_retry(client: cc.Client, prefix: str) -> None:
    rpb = client.records
    topic = f"{prefix}-idempotent"
    client.create_topic(topic, 1)
    init = client.init_producer(f"{prefix}-producer")
    check(init.producer_id != 0, "InitProducer issues an id")
    recs = sample_records(5, int(time.time() * 1000))
    stamp = rpb.ProducerStamp(producer_id=init.producer_id, epoch=init.epoch, base_sequence=0)
    frame = cc.build_frame(recs, rpb.CODEC_ZSTD, producer=stamp)
    request = client.pb.ProduceRequest(batches=[client.batch(topic, 0, frame)])

    first = client.produce_request(request).results[0]
    check(not first.HasField("error"), f"first send failed: {first.error}")
    eq(first.base_offset, 0, "first send's base offset")
    check(not first.duplicate, "the first send is no duplicate")
    # The exact same request again, as a client does after a lost reply.
    again = client.produce_request(request).results[0]
    check(not again.HasField("error"), f"retry failed: {again.error}")
    eq(again.base_offset, first.base_offset, "the retry's base offset is the original's")
    check(again.duplicate, "the retry is flagged duplicate")

    got, hwm = client.read_partition(topic, 0)
    eq(hwm, len(recs), "one copy stored (high watermark)")
    same_records(got, recs, "one copy readable")

    # The next sequence is a new batch.
    stamp2 = rpb.ProducerStamp(producer_id=init.producer_id, epoch=init.epoch, base_sequence=len(recs))
    nxt = client.produce([client.batch(topic, 0, cc.build_frame(recs[:2], rpb.CODEC_LZ4_FRAME, producer=stamp2))])
    eq((nxt.results[0].base_offset, nxt.results[0].duplicate), (len(recs), False), "the next sequence")


def test_conditional_append(client: cc.Client, prefix: str) -> None:
    rpb = client.records
    topic = f"{prefix}-conditional"
    client.create_topic(topic, 1)
    ts = int(time.time() * 1000)
    frame = cc.build_frame([Rec(b"a", timestamp_ms=ts), Rec(b"b", timestamp_ms=ts)], rpb.CODEC_ZSTD)

    res = client.produce([client.batch(topic, 0, frame, expected_offset=0)]).results[0]
    check(not res.HasField("error"), f"expected_offset 0 failed: {res.error}")
    eq(res.base_offset, 0, "committed at the expected offset 0")
    res = client.produce([client.batch(topic, 0, frame, expected_offset=2)]).results[0]
    check(not res.HasField("error"), f"expected_offset 2 failed: {res.error}")
    eq(res.base_offset, 2, "committed at the expected offset 2")

    # A wrong expectation: the whole (single-batch) call fails with the next offset.
    err = expect_error(lambda: client.produce([client.batch(topic, 0, frame, expected_offset=1)]))
    eq(err.code, grpc.StatusCode.FAILED_PRECONDITION, f"status code ({err.message})")
    eq(err.reason, "ERROR_REASON_OFFSET_MISMATCH", "ErrorInfo reason")
    eq(err.domain, "cairn", "ErrorInfo domain")
    eq(err.metadata.get("next_offset"), "4", f"ErrorInfo metadata {err.metadata}")
    # The reason is the name of a value of the generated cairn.v2.ErrorReason enum.
    errors = cc.load_api().errors
    eq(errors.ErrorReason.Value(err.reason), errors.ERROR_REASON_OFFSET_MISMATCH, "enum value")
    _, hwm = client.read_partition(topic, 0)
    eq(hwm, 4, "nothing written by the refused append")


def test_bad_crc_is_refused(client: cc.Client, prefix: str) -> None:
    rpb = client.records
    topic = f"{prefix}-badcrc"
    client.create_topic(topic, 2)
    ts = int(time.time() * 1000)
    good = cc.build_frame([Rec(b"fine", key=b"k", timestamp_ms=ts)], rpb.CODEC_LZ4_FRAME)
    bad = cc.build_frame([Rec(b"corrupt", timestamp_ms=ts)], rpb.CODEC_ZSTD)
    bad.header.payload_crc32c ^= 0x1

    err = expect_error(lambda: client.produce([client.batch(topic, 0, bad)]))
    eq(err.code, grpc.StatusCode.INVALID_ARGUMENT, f"status code ({err.message})")
    eq(err.reason, "ERROR_REASON_INVALID_FRAME", "ErrorInfo reason")

    # A bad frame beside a good one fails the whole call, and nothing is written.
    err = expect_error(lambda: client.produce([client.batch(topic, 1, good), client.batch(topic, 0, bad)]))
    eq(err.code, grpc.StatusCode.INVALID_ARGUMENT, f"status code ({err.message})")
    eq(err.metadata.get("batch"), "1", f"the refused batch is named ({err.metadata})")

    # A payload changed after the CRC was taken is refused the same way.
    flipped = cc.build_frame([Rec(b"flipped", timestamp_ms=ts)], rpb.CODEC_NONE)
    flipped.payload = bytes([flipped.payload[0] ^ 0x40]) + flipped.payload[1:]
    err = expect_error(lambda: client.produce([client.batch(topic, 0, flipped)]))
    eq(err.code, grpc.StatusCode.INVALID_ARGUMENT, f"status code ({err.message})")

    for p in range(2):
        _, hwm = client.read_partition(topic, p)
        eq(hwm, 0, f"nothing written to partition {p}")

    # And our own reader refuses a fetched frame whose CRC does not match.
    res = client.produce([client.batch(topic, 1, good)]).results[0]
    check(not res.HasField("error"), f"good frame failed: {res.error}")
    fetched = client.fetch(topic, 1, 0).frames[0]
    fetched.header.payload_crc32c ^= 0x1
    try:
        cc.open_frame(fetched.header, fetched.payload)
    except cc.FrameError:
        pass
    else:
        raise AssertionError("open_frame accepted a wrong CRC")


TESTS = [
    test_murmur2_matches_kafka,
    test_round_trip_zstd,
    test_round_trip_lz4,
    test_idempotent_retry,
    test_conditional_append,
    test_bad_crc_is_refused,
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("address", nargs="?", default=os.environ.get("CAIRN_ENDPOINT"))
    parser.add_argument("--topic-prefix", default=f"py-{secrets.token_hex(4)}")
    args = parser.parse_args()
    if not args.address:
        parser.error("give the agent's address as an argument or in CAIRN_ENDPOINT")
    client = cc.Client(args.address)
    passed = failed = 0
    for test in TESTS:
        started = time.monotonic()
        try:
            test(client, args.topic_prefix)
        except Exception:  # report every failure and go on
            failed += 1
            print(f"FAIL {test.__name__}", flush=True)
            traceback.print_exc(file=sys.stdout)
        else:
            passed += 1
            print(f"ok   {test.__name__} ({time.monotonic() - started:.2f}s)", flush=True)
    client.close()
    print(f"python client: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
