"""Unmodified Kafka clients against a Cairn agent's Kafka listener (tests/tests/kafka.rs).

Each mode prints one JSON document on stdout; the Rust test checks it against what it
produced or read through gRPC.

  produce BOOTSTRAP TOPIC COUNT CODEC PREFIX   confluent-kafka (librdkafka), idempotent
  consume BOOTSTRAP TOPIC PARTITIONS COUNT     confluent-kafka, assign() from the beginning
  offsets BOOTSTRAP TOPIC PARTITION TS_MS      watermarks and offsets_for_times
  kafka-python BOOTSTRAP TOPIC COUNT           kafka-python: produce COUNT, read them back as
                                               a member of group py-group, and commit
  admin BOOTSTRAP STEP                          confluent-kafka AdminClient: STEP is create,
                                               grow, trim, configs, acls or delete (topic `adm`)
  member BOOTSTRAP TOPIC GROUP NAME STOP_FILE   confluent-kafka group member until STOP_FILE
                                               exists: one JSON line per record and commit

CAIRN_KAFKA_CONFIG, when set, is a JSON object of librdkafka settings added to every
confluent-kafka client's (security.protocol, ssl.ca.location, ...); its key
`cairn.oauth.token` becomes an OAUTHBEARER token callback returning that token.
"""

import json
import os
import sys
import time


def conf(base):
    """`base` with the settings of CAIRN_KAFKA_CONFIG."""
    extra = json.loads(os.environ.get("CAIRN_KAFKA_CONFIG", "{}"))
    token = extra.pop("cairn.oauth.token", None)
    if token is not None:
        extra["oauth_cb"] = lambda _config: (token, time.time() + 3600)
    if extra.get("group.protocol") == "consumer":
        # KIP-848: the broker owns these; librdkafka refuses them.
        for k in ("session.timeout.ms", "heartbeat.interval.ms",
                  "partition.assignment.strategy"):
            base.pop(k, None)
    return {**base, **extra}


def produce(bootstrap, topic, count, codec, prefix):
    from confluent_kafka import Producer

    p = Producer(conf({
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "compression.type": codec,
        "linger.ms": 20,
        "client.id": "cairn-test",
    }))
    delivered = []
    errors = []

    def on_delivery(err, msg):
        if err is not None:
            errors.append(str(err))
        else:
            delivered.append([msg.partition(), msg.offset(), msg.key().decode()])

    for i in range(count):
        key = f"{prefix}-{i}"
        while True:
            try:
                p.produce(topic, key=key, value=f"value of {key}".encode(),
                          headers=[("seq", str(i).encode()), ("codec", codec.encode())],
                          on_delivery=on_delivery)
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
    left = p.flush(60)
    print(json.dumps({"delivered": delivered, "errors": errors, "unflushed": left}))


def consume(bootstrap, topic, partitions, count):
    from confluent_kafka import Consumer, TopicPartition, OFFSET_BEGINNING

    c = Consumer(conf({
        "bootstrap.servers": bootstrap,
        "group.id": "unused-assign-only",
        "enable.auto.commit": False,
        "client.id": "cairn-test",
    }))
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    records = []
    deadline = time.time() + 120
    while len(records) < count and time.time() < deadline:
        msg = c.poll(1.0)
        if msg is None:
            continue
        if msg.error():
            print(json.dumps({"error": str(msg.error())}))
            sys.exit(1)
        records.append([
            msg.partition(), msg.offset(),
            msg.key().decode() if msg.key() is not None else None,
            msg.value().decode(),
            [[k, v.decode()] for k, v in (msg.headers() or [])],
            msg.timestamp()[1],
        ])
    c.close()
    print(json.dumps({"records": records}))


def offsets(bootstrap, topic, partition, ts_ms):
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer(conf({"bootstrap.servers": bootstrap, "group.id": "unused"}))
    low, high = c.get_watermark_offsets(TopicPartition(topic, partition), timeout=30)
    found = c.offsets_for_times([TopicPartition(topic, partition, ts_ms)], timeout=30)
    c.close()
    print(json.dumps({"low": low, "high": high, "for_time": found[0].offset}))


def kafka_python(bootstrap, topic, count):
    from kafka import KafkaConsumer, KafkaProducer

    p = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=10)
    futures = [p.send(topic, key=f"kp-{i}".encode(), value=f"kafka-python {i}".encode())
               for i in range(count)]
    sent = [[f.get(timeout=60).partition, f.get(timeout=60).offset] for f in futures]
    p.close()
    # A group member: joins `py-group`, reads everything, commits what it read.
    c = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id="py-group",
                      enable_auto_commit=False, auto_offset_reset="earliest",
                      consumer_timeout_ms=15000)
    got = []
    for msg in c:
        got.append([msg.partition, msg.offset, msg.key.decode(), msg.value.decode()])
        if len(got) >= count:
            break
    c.commit()
    committed = {str(tp.partition): c.committed(tp) for tp in sorted(c.assignment())}
    c.close()
    print(json.dumps({"sent": sent, "got": got, "committed": committed}))


def admin(bootstrap, step):
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import AdminClient, ConfigResource, NewPartitions, NewTopic

    a = AdminClient(conf({"bootstrap.servers": bootstrap}))
    out = {}

    def outcome(futures):
        res = {}
        for k, f in futures.items():
            try:
                f.result(timeout=30)
                res[str(k)] = "ok"
            except Exception as e:  # the error is the result
                res[str(k)] = str(e)
        return res

    if step == "create":
        out["create"] = outcome(a.create_topics([
            NewTopic("adm", 3, config={"retention.ms": "3600000", "compression.type": "lz4"}),
            NewTopic("adm-bad", 1, config={"cleanup.policy": "compact"}),
        ]))
        out["again"] = outcome(a.create_topics([NewTopic("adm", 3)]))
        res = ConfigResource(ConfigResource.Type.TOPIC, "adm")
        configs = a.describe_configs([res])[res].result(timeout=30)
        out["configs"] = {k: v.value for k, v in configs.items()}
        cluster = a.describe_cluster().result(timeout=30) if hasattr(a, "describe_cluster") else None
        out["brokers"] = len(cluster.nodes) if cluster else None
    elif step == "grow":
        out["grow"] = outcome(a.create_partitions([NewPartitions("adm", 5)]))
        out["shrink"] = outcome(a.create_partitions([NewPartitions("adm", 2)]))
        md = a.list_topics("adm", timeout=30)
        out["partitions"] = len(md.topics["adm"].partitions)
    elif step == "trim":
        done = a.delete_records([TopicPartition("adm", 0, 2)])
        out["trim"] = {str(k): f.result(timeout=30).low_watermark for k, f in done.items()}
    elif step == "configs":
        from confluent_kafka.admin import AlterConfigOpType, ConfigEntry

        def change(topic, entries):
            res = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[
                ConfigEntry(k, v, incremental_operation=getattr(AlterConfigOpType, op))
                for k, v, op in entries
            ])
            return list(outcome(a.incremental_alter_configs([res])).values())[0]

        out["set"] = change("adm", [("retention.ms", "120000", "SET"),
                                    ("compression.type", None, "DELETE")])
        out["bad"] = change("adm", [("cleanup.policy", "compact", "SET")])
        out["missing"] = change("never-made", [("retention.ms", "1", "SET")])
        res = ConfigResource(ConfigResource.Type.TOPIC, "adm")
        configs = a.describe_configs([res])[res].result(timeout=30)
        out["configs"] = {k: v.value for k, v in configs.items()}
    elif step == "acls":
        from confluent_kafka.admin import (AclBinding, AclBindingFilter, AclOperation,
                                           AclPermissionType, ResourcePatternType,
                                           ResourceType)
        T, G = ResourceType.TOPIC, ResourceType.GROUP
        out["create"] = outcome(a.create_acls([
            AclBinding(T, "adm-", ResourcePatternType.PREFIXED, "User:alice", "*",
                       AclOperation.READ, AclPermissionType.ALLOW),
            AclBinding(G, "g1", ResourcePatternType.LITERAL, "User:bob", "*",
                       AclOperation.READ, AclPermissionType.DENY),
            AclBinding(T, "t", ResourcePatternType.LITERAL, "User:bob", "10.0.0.1",
                       AclOperation.READ, AclPermissionType.ALLOW),
        ]))
        every = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None,
                                 AclOperation.ANY, AclPermissionType.ANY)

        def listed():
            return sorted([b.restype.name, b.name, b.resource_pattern_type.name, b.principal,
                           b.operation.name, b.permission_type.name]
                          for b in a.describe_acls(every).result(timeout=30))

        out["described"] = listed()
        groups = AclBindingFilter(G, None, ResourcePatternType.ANY, None, None,
                                  AclOperation.ANY, AclPermissionType.ANY)
        deleted = a.delete_acls([groups])[groups].result(timeout=30)
        out["deleted"] = len(deleted)
        out["left"] = listed()
    elif step == "delete":
        out["delete"] = outcome(a.delete_topics(["adm", "never-made"]))
    print(json.dumps(out))


def member(bootstrap, topic, group, name, stop_file):
    from confluent_kafka import Consumer, KafkaException

    c = Consumer(conf({
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "client.id": name,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 500,
        "partition.assignment.strategy": "range",
    }))
    c.subscribe([topic])
    while not os.path.exists(stop_file):
        msgs = c.consume(500, 0.5)
        for m in msgs:
            if m.error():
                print(json.dumps({"error": str(m.error())}), flush=True)
                continue
            print(json.dumps({"p": m.partition(), "o": m.offset(), "k": m.key().decode()}),
                  flush=True)
        if msgs:
            try:
                done = c.commit(asynchronous=False)
                print(json.dumps({"commit": [[t.partition, t.offset] for t in done]}), flush=True)
            except KafkaException as e:
                print(json.dumps({"commit_error": str(e)}), flush=True)
    c.close()
    print(json.dumps({"closed": name}), flush=True)


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "produce":
        produce(args[0], args[1], int(args[2]), args[3], args[4])
    elif mode == "consume":
        consume(args[0], args[1], int(args[2]), int(args[3]))
    elif mode == "offsets":
        offsets(args[0], args[1], int(args[2]), int(args[3]))
    elif mode == "admin":
        admin(args[0], args[1])
    elif mode == "member":
        member(args[0], args[1], args[2], args[3], args[4])
    elif mode == "kafka-python":
        kafka_python(args[0], args[1], int(args[2]))
    else:
        sys.exit(f"unknown mode {mode}")
