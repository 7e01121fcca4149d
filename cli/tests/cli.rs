//! The `cairn` command end to end: an agent with the embedded defaults, topic commands,
//! produce from stdin, consume, inspect, and one-line errors.

// A panic is how a test fails; helpers outside #[test] fns may unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{Agent, BIN, start_agent_with_env};

/// `cairn agent` with no storage flags, in `dir`, on a free port.
fn start_agent(dir: &Path) -> Agent {
    common::start_agent(dir, &[])
}

/// A client command against `agent`, with `stdin`.
fn cairn(agent: &Agent, args: &[&str], stdin: &str) -> Output {
    common::client(agent, args, stdin)
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn produce_consume_describe_inspect() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(dir.path());
    assert!(dir.path().join("cairn-data/meta.sqlite").exists());

    ok(cairn(
        &agent,
        &["topic", "create", "demo", "--partitions", "2"],
        "",
    ));
    // The old flag name still works (a hidden alias of --codec).
    ok(cairn(
        &agent,
        &["topic", "create", "plain", "--compression", "none"],
        "",
    ));
    assert_eq!(
        ok(cairn(&agent, &["topic", "list"], "")),
        "demo\tpartitions=2\tcodec=zstd\tretention=forever\tretention-bytes=unlimited\n\
         plain\tpartitions=1\tcodec=none\tretention=forever\tretention-bytes=unlimited\n"
    );
    ok(cairn(
        &agent,
        &["produce", "demo", "--key-separator", ":"],
        "alice:one\nbob:two\nalice:three\n",
    ));
    ok(cairn(
        &agent,
        &["produce", "demo", "--partition", "1", "--codec", "lz4"],
        "four\n",
    ));

    let text = ok(cairn(
        &agent,
        &["consume", "demo", "--from-beginning", "--print-key"],
        "",
    ));
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        vec!["\tfour", "alice\tone", "alice\tthree", "bob\ttwo"]
    );

    let json = ok(cairn(
        &agent,
        &[
            "consume",
            "demo",
            "--partition",
            "1",
            "--offset",
            "0",
            "--format",
            "json",
        ],
        "",
    ));
    let last: serde_json::Value = serde_json::from_str(json.lines().last().unwrap()).unwrap();
    assert_eq!(last["value"], "four");
    assert_eq!(last["partition"], 1);

    let described = ok(cairn(&agent, &["topic", "describe", "demo"], ""));
    let total: u64 = described
        .lines()
        .skip(2)
        .map(|l| l.split('\t').nth(3).unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(total, 4, "{described}");

    // Every frame of every segment, as `cairn inspect segment --decode` prints them.
    let segments: Vec<_> = walk(&dir.path().join("cairn-data/objects"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    assert!(!segments.is_empty(), "no segment object");
    let mut frames = Vec::new();
    for segment in &segments {
        let inspected = ok(cairn(
            &agent,
            &["inspect", "segment", segment.to_str().unwrap(), "--decode"],
            "",
        ));
        assert!(
            inspected.contains("every CRC verified, every frame decoded"),
            "{inspected}"
        );
        frames.extend(frame_rows(&inspected));
    }
    let records: u64 = frames
        .iter()
        .map(|f| f["RECORDS"].parse::<u64>().unwrap())
        .sum();
    assert_eq!(records, 4, "{frames:?}");
    let mut codecs: Vec<&str> = frames.iter().map(|f| f["CODEC"].as_str()).collect();
    codecs.sort_unstable();
    codecs.dedup();
    assert_eq!(codecs, ["lz4", "zstd"], "{frames:?}");
    for f in &frames {
        // `cairn produce` is idempotent: every frame carries its stamp (id.epoch@sequence).
        assert!(f["PRODUCER"].contains(".0@"), "a producer stamp: {f:?}");
        assert_eq!(f["TIMESTAMPS"], "create", "{f:?}");
        assert!(f["APPEND-TIME"].parse::<i64>().unwrap() > 0, "{f:?}");
        assert!(
            f["FIRST-TS"].parse::<i64>().unwrap() <= f["LAST-TS"].parse::<i64>().unwrap(),
            "{f:?}"
        );
    }

    ok(cairn(&agent, &["topic", "delete", "demo"], ""));
    let gone = cairn(&agent, &["topic", "describe", "demo"], "");
    assert!(!gone.status.success());
    let stderr = String::from_utf8(gone.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "one line, got: {stderr}");
    assert!(
        stderr.starts_with("error: not found: topic `demo` does not exist"),
        "{stderr}"
    );
}

#[test]
fn consume_follow_prints_records_as_they_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(dir.path());
    ok(cairn(
        &agent,
        &["topic", "create", "live", "--partitions", "3"],
        "",
    ));
    ok(cairn(&agent, &["produce", "live"], "old\n"));
    let mut follower = Command::new(BIN)
        .args(["consume", "live", "--follow"])
        .env("CAIRN_ENDPOINT", &agent.endpoint)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The follower says on stderr once its partitions are assigned (at the end).
    let mut ready = String::new();
    BufReader::new(follower.stderr.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert!(
        ready.starts_with("following live (3 partitions)"),
        "{ready}"
    );
    ok(cairn(
        &agent,
        &["produce", "live", "--record-key", "k"],
        "new\n",
    ));
    let mut seen = String::new();
    BufReader::new(follower.stdout.take().unwrap())
        .read_line(&mut seen)
        .unwrap();
    let _ = follower.kill();
    let _ = follower.wait();
    assert_eq!(seen, "new\n", "the follower must print only the new record");
}

#[test]
fn clear_errors_without_agent_and_for_bad_flags() {
    let out = Command::new(BIN)
        .args(["topic", "list", "--endpoint", "http://127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("is an agent running?"), "{stderr}");

    let out = Command::new(BIN)
        .args(["agent", "--segment-max-bytes", "lots"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a size"));

    // Durations outside what the agent accepts are refused, not replaced by the default.
    for args in [
        &["share", "consume", "t", "--group", "g", "--lease", "0s"][..],
        &["share", "consume", "t", "--group", "g", "--lease", "11m"][..],
        &["consume", "t", "--group", "g", "--session-timeout", "0s"][..],
    ] {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("must be between 1s and 10m"),
            "{args:?}: {stderr}"
        );
    }

    // A log filter that does not parse is an error, not a silent default.
    let out = Command::new(BIN)
        .args(["topic", "list", "--endpoint", "http://127.0.0.1:1"])
        .env("CAIRN_LOG", "cairn=notalevel")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("error: invalid CAIRN_LOG `cairn=notalevel`"),
        "{stderr}"
    );

    // `file://rel/x` names a host, not a relative directory: refused with the fix.
    let out = Command::new(BIN)
        .args([
            "agent",
            "--listen",
            "127.0.0.1:0",
            "--object-store",
            "file://rel/x",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("has no absolute path"), "{stderr}");
}

/// The frame rows of `cairn inspect segment` output, each as column name -> value.
fn frame_rows(inspected: &str) -> Vec<std::collections::BTreeMap<String, String>> {
    let mut lines = inspected.lines().map(str::trim);
    let header: Vec<&str> = lines
        .find(|l| l.starts_with("TOPIC-ID\t"))
        .unwrap_or_else(|| panic!("no header line in {inspected}"))
        .split('\t')
        .collect();
    lines
        .take_while(|l| !l.starts_with("ok:"))
        .map(|l| {
            let cells: Vec<&str> = l.split('\t').collect();
            assert_eq!(cells.len(), header.len(), "`{l}` in {inspected}");
            header
                .iter()
                .zip(cells)
                .map(|(h, c)| (h.to_string(), c.to_string()))
                .collect()
        })
        .collect()
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn produce_with_expected_offset_is_conditional() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(dir.path());
    ok(cairn(
        &agent,
        &["topic", "create", "ledger", "--partitions", "1"],
        "",
    ));

    let first = cairn(
        &agent,
        &[
            "produce",
            "ledger",
            "--partition",
            "0",
            "--expected-offset",
            "0",
        ],
        "opened\ndeposited\n",
    );
    ok(first.clone());
    let said = String::from_utf8_lossy(&first.stderr);
    assert!(said.contains("at offsets 0..2"), "{said}");

    // A writer that still believes the stream is at 0 loses, and learns where it is.
    let stale = cairn(
        &agent,
        &[
            "produce",
            "ledger",
            "--partition",
            "0",
            "--expected-offset",
            "0",
        ],
        "withdrew\n",
    );
    assert!(!stale.status.success());
    let err = String::from_utf8_lossy(&stale.stderr);
    assert!(err.contains("OFFSET_MISMATCH"), "{err}");
    assert!(err.contains("next offset is 2"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");

    ok(cairn(
        &agent,
        &[
            "produce",
            "ledger",
            "--partition",
            "0",
            "--expected-offset",
            "2",
        ],
        "withdrew\n",
    ));
    let out = ok(cairn(
        &agent,
        &[
            "consume",
            "ledger",
            "--from-beginning",
            "--max-records",
            "3",
        ],
        "",
    ));
    assert_eq!(out, "opened\ndeposited\nwithdrew\n");

    let missing = cairn(
        &agent,
        &["produce", "ledger", "--expected-offset", "3"],
        "x\n",
    );
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(err.contains("--partition"), "{err}");
}

#[test]
fn groups_and_share_groups_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(dir.path());
    ok(cairn(
        &agent,
        &["topic", "create", "jobs", "--partitions", "2"],
        "",
    ));
    ok(cairn(
        &agent,
        &["produce", "jobs", "--partition", "0"],
        "a\nb\nc\n",
    ));

    // A group member reads from the beginning, commits, leaves.
    let out = ok(cairn(
        &agent,
        &["consume", "jobs", "--group", "billing", "--from-beginning"],
        "",
    ));
    assert_eq!(out, "a\nb\nc\n");
    let described = ok(cairn(&agent, &["group", "describe", "billing"], ""));
    assert!(described.contains("jobs\t0\t3\t3\t0"), "{described}");
    // Committed: a second run of the group prints nothing new.
    let again = ok(cairn(
        &agent,
        &["consume", "jobs", "--group", "billing"],
        "",
    ));
    assert_eq!(again, "");
    // Reset to the beginning; the group reads everything again.
    let reset = ok(cairn(
        &agent,
        &[
            "group",
            "reset",
            "billing",
            "--topic",
            "jobs",
            "--to-earliest",
        ],
        "",
    ));
    assert!(reset.contains("jobs\t0\t0"), "{reset}");
    let out = ok(cairn(
        &agent,
        &["consume", "jobs", "--group", "billing"],
        "",
    ));
    assert_eq!(out, "a\nb\nc\n");
    let bad = cairn(
        &agent,
        &["group", "reset", "billing", "--topic", "jobs"],
        "",
    );
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("say where to"));
    let missing = cairn(&agent, &["group", "describe", "nobody"], "");
    assert!(String::from_utf8_lossy(&missing.stderr).contains("group `nobody` does not exist"));

    // A share group: a peek leaves records queued; --ack settles them.
    let peek = ok(cairn(
        &agent,
        &[
            "share",
            "consume",
            "jobs",
            "--group",
            "q",
            "--max-records",
            "2",
        ],
        "",
    ));
    assert_eq!(peek, "a\nb\n");
    let taken = ok(cairn(
        &agent,
        &["share", "consume", "jobs", "--group", "q", "--ack"],
        "",
    ));
    assert_eq!(taken, "a\nb\nc\n");
    let none = ok(cairn(
        &agent,
        &["share", "consume", "jobs", "--group", "q", "--ack"],
        "",
    ));
    assert_eq!(none, "");
    let list = ok(cairn(&agent, &["group", "list"], ""));
    assert_eq!(list, "billing\tconsumer\nq\tshare\n");
    let bad = cairn(
        &agent,
        &[
            "share", "consume", "jobs", "--group", "q", "--lease", "100ms",
        ],
        "",
    );
    // Refused by the CLI before the agent sees it (the agent refuses it too).
    assert!(String::from_utf8_lossy(&bad.stderr).contains("must be between 1s and 10m"));
}

/// A metadata file that exists but holds nothing is what a truncated or replaced file looks
/// like: the agent refuses it (exit 1, one line naming --init) instead of starting an empty
/// cluster over it. `--init` takes it as new; the store is then marked and restarts need no
/// flag. A file the agent creates itself needs no flag either (the first-run command).
#[test]
fn an_empty_existing_metadata_file_is_refused_without_init() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("cairn-data")).unwrap();
    std::fs::write(dir.path().join("cairn-data/meta.sqlite"), b"").unwrap();
    let out = Command::new(BIN)
        .args(["agent", "--listen", "127.0.0.1:0"])
        .current_dir(dir.path())
        .env("CAIRN_LOG", "warn")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("holds no Cairn metadata") && err.contains("--init"),
        "{err}"
    );
    assert!(out.stdout.is_empty(), "it never listened: {out:?}");

    let mut child = Command::new(BIN)
        .args(["agent", "--listen", "127.0.0.1:0", "--init"])
        .current_dir(dir.path())
        .env("CAIRN_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("cairn agent listening on "), "{line}");
    child.kill().unwrap();
    child.wait().unwrap();
    // Marked now: a restart without the flag is accepted.
    let agent = start_agent(dir.path());
    drop(agent);
}

/// An agent whose first metadata commits all fail (a metadata store that is down or too
/// contended when it starts: seen in the chaos run as a storm of PostgreSQL serialization
/// failures) keeps trying to register instead of exiting, and serves once it gets through.
#[test]
fn an_agent_waits_out_a_metadata_store_that_refuses_its_registration() {
    let dir = tempfile::tempdir().unwrap();
    // More failures than one transaction retries (60 attempts): registration fails once,
    // and the start goes on.
    let agent = start_agent_with_env(
        dir.path(),
        &[],
        &[("CAIRN_TEST_FAULTS", "commit_unavailable_first=70")],
    );
    ok(cairn(&agent, &["topic", "create", "after-outage"], ""));
}
