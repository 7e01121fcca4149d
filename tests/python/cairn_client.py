"""A small Cairn client in Python, built only from the .proto files and standard libraries.

It exists to prove that the cairn.v2 API is usable from a second language without any
Rust: the gRPC stubs are generated at run time from proto/proto with grpcio-tools (into a
temporary directory, never committed), frames are built and opened here with the
`zstandard`, `lz4` and `crc32c` packages, and keyed records are partitioned with Kafka's
murmur2 as api.proto documents.

The pinned packages are in tests/python/requirements.txt.
"""

from __future__ import annotations

import atexit
import importlib
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import crc32c as _crc32c
import grpc
import lz4.frame
import zstandard

# proto/proto in this repository, unless CAIRN_PROTO_DIR names another copy.
DEFAULT_PROTO_ROOT = Path(__file__).resolve().parents[2] / "proto" / "proto"
PROTO_FILES = ("cairn/v2/records.proto", "cairn/v2/errors.proto", "cairn/v2/api.proto")

# The limits the agent applies (cairn_proto::MAX_FRAME_RECORDS, MAX_UNCOMPRESSED_BYTES).
MAX_FRAME_RECORDS = 1_000_000
MAX_UNCOMPRESSED_BYTES = 256 << 20

_API = None


def load_api(proto_root: Path | str | None = None) -> SimpleNamespace:
    """Generates the Python messages and gRPC stubs of cairn.v2 from the .proto files into a
    temporary directory (removed at exit) and imports them. Returns a namespace with
    `records`, `errors` and `api` (messages) and `api_grpc` (stubs)."""
    global _API
    if _API is not None:
        return _API
    from grpc_tools import protoc

    root = Path(proto_root or os.environ.get("CAIRN_PROTO_DIR") or DEFAULT_PROTO_ROOT)
    out = tempfile.mkdtemp(prefix="cairn-pyproto-")
    atexit.register(shutil.rmtree, out, True)
    # grpc_tools ships google/protobuf/*.proto; nothing of ours imports them today, but the
    # include path keeps that working if the API ever does.
    well_known = Path(protoc.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{root}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        *PROTO_FILES,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"grpc_tools.protoc failed on {root}: {' '.join(args)}")
    sys.path.insert(0, out)
    _API = SimpleNamespace(
        records=importlib.import_module("cairn.v2.records_pb2"),
        errors=importlib.import_module("cairn.v2.errors_pb2"),
        api=importlib.import_module("cairn.v2.api_pb2"),
        api_grpc=importlib.import_module("cairn.v2.api_pb2_grpc"),
    )
    return _API


# ---------------------------------------------------------------------------------------
# Partitioner (api.proto: "partition = murmur2(key) & 0x7fffffff mod partitions").


def murmur2(data: bytes) -> int:
    """Kafka's 32-bit MurmurHash2 (seed 0x9747b28c), as an unsigned 32-bit int."""
    m = 0x5BD1E995
    r = 24
    mask = 0xFFFFFFFF
    length = len(data)
    h = (0x9747B28C ^ length) & mask
    whole = length - length % 4
    for i in range(0, whole, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * m) & mask
        k ^= k >> r
        k = (k * m) & mask
        h = (h * m) & mask
        h ^= k
    rest = length % 4
    if rest >= 3:
        h ^= data[whole + 2] << 16
    if rest >= 2:
        h ^= data[whole + 1] << 8
    if rest >= 1:
        h ^= data[whole]
        h = (h * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    h ^= h >> 15
    return h


def partition_for_key(key: bytes, partitions: int) -> int:
    """The partition of a keyed record, the same in every Cairn client and in Kafka."""
    return (murmur2(key) & 0x7FFFFFFF) % max(partitions, 1)


# ---------------------------------------------------------------------------------------
# Frames (records.proto).


class FrameError(Exception):
    """A frame that cannot be opened: bad CRC, size, count or codec."""


def payload_crc(payload: bytes) -> int:
    """CRC32C (Castagnoli) of the payload bytes, as FrameHeader.payload_crc32c holds it."""
    return _crc32c.crc32c(payload)


def compress(codec: int, data: bytes) -> bytes:
    """Compresses `data` with a cairn.v2.Codec value."""
    records = load_api().records
    if codec == records.CODEC_NONE:
        return bytes(data)
    if codec == records.CODEC_ZSTD:
        # One zstd frame with the content size in its header (the one-shot compress writes it).
        return zstandard.ZstdCompressor(level=3, write_content_size=True).compress(data)
    if codec == records.CODEC_LZ4_FRAME:
        # The LZ4 frame format (magic 0x184D2204), with the content size stored.
        return lz4.frame.compress(data, store_size=True)
    raise FrameError(f"cannot compress with codec {codec}")


def decompress(codec: int, payload: bytes, size: int) -> bytes:
    """Decompresses a payload that must decompress to exactly `size` bytes, never producing
    more than size + 1 bytes (a hostile header cannot make us allocate without bound)."""
    records = load_api().records
    if size > MAX_UNCOMPRESSED_BYTES:
        raise FrameError(f"uncompressed_size {size} is over {MAX_UNCOMPRESSED_BYTES}")
    if codec == records.CODEC_NONE:
        out = bytes(payload)
    elif codec == records.CODEC_ZSTD:
        try:
            params = zstandard.get_frame_parameters(payload)
        except zstandard.ZstdError as e:
            raise FrameError(f"not a zstd frame: {e}") from e
        if params.content_size not in (size, zstandard.CONTENTSIZE_UNKNOWN):
            raise FrameError(
                f"zstd frame declares {params.content_size} bytes, the header {size}"
            )
        chunks, got = [], 0
        try:
            reader = zstandard.ZstdDecompressor().stream_reader(payload)
            while got <= size:
                chunk = reader.read(size + 1 - got)
                if not chunk:
                    break
                chunks.append(chunk)
                got += len(chunk)
        except zstandard.ZstdError as e:
            raise FrameError(f"zstd: {e}") from e
        out = b"".join(chunks)
    elif codec == records.CODEC_LZ4_FRAME:
        try:
            out = lz4.frame.LZ4FrameDecompressor().decompress(payload, max_length=size + 1)
        except RuntimeError as e:
            raise FrameError(f"lz4: {e}") from e
    else:
        raise FrameError(f"unknown codec {codec}")
    if len(out) != size:
        raise FrameError(f"the header declares {size} bytes, the payload decompresses to {len(out)}")
    return out


@dataclass
class Rec:
    """One record as a Python value (what a producer sends and a consumer gets back)."""

    value: bytes
    key: bytes = b""
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    timestamp_ms: int = 0
    # Set on records read back.
    offset: int | None = None


def build_frame(recs: list[Rec], codec: int, producer=None):
    """A CREATE_TIME frame of `recs` compressed with `codec`, stamped with `producer` (a
    cairn.v2.ProducerStamp) when given. Returns a cairn.v2.Frame."""
    pb = load_api().records
    if not 1 <= len(recs) <= MAX_FRAME_RECORDS:
        raise FrameError(f"a frame holds 1 to {MAX_FRAME_RECORDS} records, not {len(recs)}")
    batch = pb.RecordBatch(
        records=[
            pb.Record(
                timestamp_ms=r.timestamp_ms,
                key=r.key,
                value=r.value,
                headers=[pb.RecordHeader(key=k, value=v) for k, v in r.headers],
            )
            for r in recs
        ]
    )
    raw = batch.SerializeToString()
    payload = compress(codec, raw)
    header = pb.FrameHeader(
        record_count=len(recs),
        codec=codec,
        format=pb.PAYLOAD_FORMAT_CAIRN_RECORDS,
        uncompressed_size=len(raw),
        payload_crc32c=payload_crc(payload),
        timestamp_type=pb.TIMESTAMP_TYPE_CREATE_TIME,
        first_timestamp_ms=min(r.timestamp_ms for r in recs),
        last_timestamp_ms=max(r.timestamp_ms for r in recs),
    )
    if producer is not None:
        header.producer.CopyFrom(producer)
    return pb.Frame(header=header, payload=payload)


def open_frame(header, payload: bytes) -> list[Rec]:
    """Verifies the CRC, decompresses within the declared size and decodes a frame's records
    (a LOG_APPEND_TIME frame's records all take its append time)."""
    pb = load_api().records
    computed = payload_crc(payload)
    if computed != header.payload_crc32c:
        raise FrameError(f"CRC32C mismatch: header {header.payload_crc32c:#010x}, payload {computed:#010x}")
    if header.format != pb.PAYLOAD_FORMAT_CAIRN_RECORDS:
        raise FrameError(f"payload format {header.format} is not CAIRN_RECORDS")
    raw = decompress(header.codec, payload, header.uncompressed_size)
    batch = pb.RecordBatch.FromString(raw)
    if len(batch.records) != header.record_count:
        raise FrameError(f"the header says {header.record_count} records, the payload holds {len(batch.records)}")
    log_append = header.timestamp_type == pb.TIMESTAMP_TYPE_LOG_APPEND_TIME
    return [
        Rec(
            value=r.value,
            key=r.key,
            headers=[(h.key, h.value) for h in r.headers],
            timestamp_ms=header.append_time_ms if log_append else r.timestamp_ms,
        )
        for r in batch.records
    ]


# ---------------------------------------------------------------------------------------
# Errors: google.rpc.Status from the grpc-status-details-bin trailer.


@dataclass
class CairnError:
    """A failed call as a program acts on it."""

    code: grpc.StatusCode
    message: str
    reason: str  # a cairn.v2.ErrorReason name, e.g. "ERROR_REASON_OFFSET_MISMATCH"
    domain: str
    metadata: dict[str, str]


def error_of(err: grpc.RpcError) -> CairnError:
    """The status code, message and google.rpc.ErrorInfo of a failed call."""
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    status = rpc_status.from_call(err)  # parses grpc-status-details-bin
    reason, domain, metadata = "", "", {}
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
                break
    return CairnError(err.code(), err.details() or "", reason, domain, metadata)


# ---------------------------------------------------------------------------------------
# The client.


class Client:
    """Stubs for one agent, with a few conveniences."""

    def __init__(self, address: str, timeout: float = 30.0):
        api = load_api()
        self.pb = api.api
        self.records = api.records
        target = address.removeprefix("http://")
        self.channel = grpc.insecure_channel(target)
        grpc.channel_ready_future(self.channel).result(timeout=timeout)
        self.timeout = timeout
        self.admin = api.api_grpc.AdminServiceStub(self.channel)
        self.producer = api.api_grpc.ProducerServiceStub(self.channel)
        self.consumer = api.api_grpc.ConsumerServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def create_topic(self, name: str, partitions: int, codec: int = 0):
        req = self.pb.CreateTopicRequest(name=name, partitions=partitions, codec=codec)
        return self.admin.CreateTopic(req, timeout=self.timeout).topic

    def init_producer(self, name: str = ""):
        return self.producer.InitProducer(
            self.pb.InitProducerRequest(name=name), timeout=self.timeout
        )

    def batch(self, topic: str, partition: int, frame, expected_offset: int | None = None):
        """One ProduceBatch."""
        b = self.pb.ProduceBatch(topic=topic, partition=partition, frame=frame)
        if expected_offset is not None:
            b.expected_offset = expected_offset
        return b

    def produce(self, batches, atomic: bool = False):
        """Sends one Produce call; returns its ProduceResponse (raises grpc.RpcError)."""
        req = self.pb.ProduceRequest(batches=list(batches), atomic=atomic)
        return self.produce_request(req)

    def produce_request(self, req):
        return self.producer.Produce(req, timeout=self.timeout)

    def fetch(self, topic: str, partition: int, offset: int, max_wait_ms: int = 0):
        req = self.pb.FetchRequest(
            topic=topic, partition=partition, offset=offset, max_wait_ms=max_wait_ms
        )
        return self.consumer.Fetch(req, timeout=self.timeout)

    def read_partition(self, topic: str, partition: int, offset: int = 0) -> tuple[list[Rec], int]:
        """Every record of a partition from `offset` up to its high watermark when the reading
        ends, decoded and CRC-checked; returns the records and that high watermark."""
        out: list[Rec] = []
        while True:
            resp = self.fetch(topic, partition, offset)
            for f in resp.frames:
                for i, rec in enumerate(open_frame(f.header, f.payload)):
                    rec.offset = f.base_offset + i
                    if rec.offset >= offset:  # a frame may start before the offset asked
                        out.append(rec)
                offset = max(offset, f.base_offset + f.header.record_count)
            if offset >= resp.high_watermark or not resp.frames:
                return out, resp.high_watermark
