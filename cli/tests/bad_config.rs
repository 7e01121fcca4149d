//! Bad configuration and bad command lines: store URLs that cannot work, a metadata file
//! that is not a database, out-of-range durations and sizes, config files that do not
//! parse, unknown subcommands, addresses nobody can dial, and client commands given
//! impossible values. Each is refused with exit code 1 (2 for the argument parser's usage
//! errors) and one line naming the problem, never listens, and damages nothing: every group
//! ends with an agent started over the same files serving a command.
//!
//! docs/BAD_INPUT.md is the table of every case. The tests at the end are inputs this
//! catalogue found answered wrongly, fixed with it.

// A panic is how a test fails; helpers outside #[test] fns may unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Output;

use common::{client, command, run_with, start_agent};

/// `cairn args` in `dir` with no input.
fn cairn_in(dir: &Path, args: &[&str]) -> Output {
    run_with(command(dir, args, &[]), "")
}

/// `cairn agent --listen 127.0.0.1:0 args` in `dir`.
fn agent_in(dir: &Path, args: &[&str]) -> Output {
    let mut all = vec!["agent", "--listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    cairn_in(dir, &all)
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A refusal: exit code 1, nothing on stdout (an agent never said it listens), and stderr
/// exactly one line, starting with `prefix` (the whole line when `prefix` is all of it).
#[track_caller]
fn refused(out: &Output, prefix: &str) -> String {
    let stderr = stderr_of(out);
    assert_eq!(out.status.code(), Some(1), "exit code; stderr: {stderr}");
    assert!(
        out.stdout.is_empty(),
        "printed on stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(stderr.lines().count(), 1, "one line, got: {stderr}");
    assert!(
        stderr.starts_with(prefix),
        "expected `{prefix}`, got: {stderr}"
    );
    stderr.trim_end().to_string()
}

/// [`refused`], the whole line.
#[track_caller]
fn refused_exactly(out: &Output, line: &str) {
    assert_eq!(refused(out, line), line);
}

/// A usage error of the argument parser: exit code 2, nothing on stdout, the first line of
/// stderr exactly `first`, and after it only the parser's usage and `--help` hint.
#[track_caller]
fn usage_error(out: &Output, first: &str) {
    let stderr = stderr_of(out);
    assert_eq!(out.status.code(), Some(2), "exit code; stderr: {stderr}");
    assert!(out.stdout.is_empty(), "printed on stdout: {out:?}");
    let mut lines = stderr.lines();
    assert_eq!(lines.next(), Some(first), "{stderr}");
    let rest: Vec<&str> = lines.filter(|l| !l.trim().is_empty()).collect();
    assert!(
        rest.iter()
            .all(|l| l.starts_with("Usage: ") || *l == "For more information, try '--help'."),
        "only the usage and the hint follow: {stderr}"
    );
}

/// The proof that closes every group: an agent over the files in `dir` (with `args`)
/// creates a topic, takes a record and gives it back.
fn agent_serves(dir: &Path, args: &[&str]) {
    let agent = start_agent(dir, args);
    let ok = |out: Output| {
        assert!(out.status.success(), "failed: {}", stderr_of(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    ok(client(&agent, &["topic", "create", "after-bad-input"], ""));
    ok(client(
        &agent,
        &["produce", "after-bad-input"],
        "still here\n",
    ));
    let read = ok(client(
        &agent,
        &["consume", "after-bad-input", "--from-beginning"],
        "",
    ));
    assert_eq!(read, "still here\n");
}

/// `n` bytes that look random (xorshift), the same every run.
fn noise(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Object-store URLs and metadata specs that cannot work: refused at start, before
/// listening, in one line that names the URL and what is wrong with it.
#[test]
fn store_urls_that_cannot_work_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (url, line) in [
        ("s3://", "error: object store URL `s3://` names no bucket"),
        (
            "s3:///prefix",
            "error: object store URL `s3:///prefix` names no bucket",
        ),
        (
            "ftp://x",
            "error: unsupported object store URL `ftp://x`: use file:///dir, s3://bucket/prefix or memory://",
        ),
        ("", "error: object store URL `` names no directory"),
    ] {
        refused_exactly(&agent_in(d, &["--object-store", url]), line);
    }
    let memory = ["--object-store", "memory://"];
    let metadata = |spec: &str| agent_in(d, &[memory[0], memory[1], "--metadata", spec]);
    for spec in ["ftp://x", "memory:", "mysql://db/cairn"] {
        refused_exactly(
            &metadata(spec),
            &format!(
                "error: unsupported metadata store `{spec}`: use sqlite:PATH, postgres://USER@HOST:PORT/DB or fdb:CLUSTER_FILE"
            ),
        );
    }
    for spec in ["sqlite:", "sqlite://"] {
        refused_exactly(
            &metadata(spec),
            &format!(
                "error: cannot open metadata store {spec}: metadata spec `sqlite:` needs a file path, e.g. sqlite:./cairn-data/meta.sqlite"
            ),
        );
    }
    refused_exactly(
        &metadata("sqlite:/proc/cairn-nope/meta.sqlite"),
        "error: cannot open metadata store sqlite:/proc/cairn-nope/meta.sqlite: cannot create directory /proc/cairn-nope for the metadata file: No such file or directory (os error 2)",
    );
    // PostgreSQL that nobody serves: refused at once, the password never shown.
    let line = refused(
        &metadata("postgres://cairn:hunter2@127.0.0.1:1/cairn"),
        "error: cannot open metadata store postgres://cairn:***@127.0.0.1:1/cairn: postgres metadata store unavailable: error connecting to server",
    );
    assert!(line.contains("Connection refused"), "{line}");
    assert!(!line.contains("hunter2"), "{line}");
    refused_exactly(
        &metadata("postgres://x@[bad/db"),
        "error: cannot open metadata store postgres://x@[bad/db: bad PostgreSQL URL `postgres://x@[bad/db`: invalid connection string",
    );
    if cfg!(not(feature = "fdb")) {
        refused_exactly(
            &metadata("fdb:/etc/foundationdb/fdb.cluster"),
            "error: cannot open metadata store fdb:/etc/foundationdb/fdb.cluster: this build has no FoundationDB support: rebuild with `--features fdb`",
        );
    }
    agent_serves(d, &[]);
}

/// A metadata file that is not a SQLite database (random bytes, a SQLite header over
/// garbage, text) is refused at start in one line naming the file, with `--init` too, and
/// left byte for byte as it was; a directory where the file should be is refused too.
#[test]
fn a_metadata_file_that_is_not_a_database_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("cairn-data")).unwrap();
    let file = d.join("cairn-data/meta.sqlite");
    let mut with_header = b"SQLite format 3\0".to_vec();
    with_header.extend(noise(8_176));
    for (what, bytes) in [
        ("random bytes", noise(8_192)),
        ("a SQLite header over garbage", with_header),
        ("text", b"this is not a database\n".to_vec()),
    ] {
        std::fs::write(&file, &bytes).unwrap();
        for flags in [&[][..], &["--init"][..]] {
            refused(
                &agent_in(d, flags),
                "error: cannot open metadata store sqlite:./cairn-data/meta.sqlite: sqlite metadata store is damaged: file is not a database; stop every agent and compactor using it and restore it from a backup",
            );
            assert_eq!(
                std::fs::read(&file).unwrap(),
                bytes,
                "{what} {flags:?}: the file is left as it was"
            );
        }
    }
    std::fs::create_dir(d.join("dir.sqlite")).unwrap();
    let line = refused(
        &agent_in(d, &["--metadata", "sqlite:dir.sqlite"]),
        "error: cannot open metadata store sqlite:dir.sqlite: ",
    );
    assert!(line.contains("is a directory: name a file"), "{line}");
    // Restored (here: moved away), the same directory serves.
    std::fs::remove_file(&file).unwrap();
    agent_serves(d, &[]);
}

/// Durations and sizes on flags (and their environment variables) outside what the agent
/// takes: the parser refuses what is not a duration or size, the agent what is out of
/// range; neither is replaced by a default.
#[test]
fn out_of_range_durations_and_sizes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (flag, value, line) in [
        (
            "--linger",
            "0s",
            "error: invalid configuration: linger must be between 1ms and 60s, got 0ns",
        ),
        (
            "--linger",
            "2m",
            "error: invalid configuration: linger must be between 1ms and 60s, got 120s",
        ),
        (
            "--segment-max-bytes",
            "1",
            "error: invalid configuration: segment_max_bytes must be between 1 KiB and 1 GiB, got 1",
        ),
        (
            "--segment-max-bytes",
            "2GiB",
            "error: invalid configuration: segment_max_bytes must be between 1 KiB and 1 GiB, got 2147483648",
        ),
        (
            "--agent-lease",
            "0s",
            "error: invalid configuration: agent_lease must be between 300ms and 10m, got 0ns",
        ),
        (
            "--agent-lease",
            "11m",
            "error: invalid configuration: agent_lease must be between 300ms and 10m, got 660s",
        ),
        (
            "--shutdown-timeout",
            "11m",
            "error: invalid configuration: shutdown_timeout must be at most 10m, got 660s",
        ),
        (
            "--kafka-zone-cidrs",
            "eu-1a=10.0.0.0/33",
            "error: invalid configuration: kafka_zone_cidrs: `eu-1a=10.0.0.0/33`: `10.0.0.0/33` is not a CIDR range (invalid IP address syntax)",
        ),
        (
            "--kafka-zone-cidrs",
            "10.0.0.0/8",
            "error: invalid configuration: kafka_zone_cidrs: `10.0.0.0/8` is not ZONE=CIDR (e.g. eu-1a=10.1.0.0/16)",
        ),
        (
            "--kafka-auto-create-partitions",
            "10001",
            "error: invalid configuration: kafka_auto_create_partitions must be at most 10000, got 10001",
        ),
    ] {
        refused_exactly(&agent_in(d, &[flag, value]), line);
    }
    // Refused before any store was opened: nothing was created.
    assert!(
        !d.join("cairn-data").exists(),
        "a refused start created ./cairn-data"
    );
    for (arg, first) in [
        (
            "--linger=banana",
            "error: invalid value 'banana' for '--linger <DURATION>': expected number at 0",
        ),
        (
            "--linger=-5s",
            "error: invalid value '-5s' for '--linger <DURATION>': expected number at 0",
        ),
        (
            "--segment-max-bytes=99999999999GiB",
            "error: invalid value '99999999999GiB' for '--segment-max-bytes <SIZE>': size `99999999999GiB` is too large",
        ),
        (
            "--segment-max-bytes=4XB",
            "error: invalid value '4XB' for '--segment-max-bytes <SIZE>': unknown size unit `xb` in `4XB`: use B, KiB, MiB or GiB",
        ),
        (
            "--segment-max-bytes=-1",
            "error: invalid value '-1' for '--segment-max-bytes <SIZE>': `-1` is not a size: expected a number such as 4MiB or 65536",
        ),
        (
            "--agent-lease=forever",
            "error: invalid value 'forever' for '--agent-lease <DURATION>': expected number at 0",
        ),
    ] {
        usage_error(&agent_in(d, &[arg]), first);
    }
    // The environment variable is parsed like the flag.
    usage_error(
        &run_with(
            command(
                d,
                &["agent", "--listen", "127.0.0.1:0"],
                &[("CAIRN_LINGER", "banana")],
            ),
            "",
        ),
        "error: invalid value 'banana' for '--linger <DURATION>': expected number at 0",
    );
    // Counts a client command cannot take.
    usage_error(
        &cairn_in(d, &["topic", "create", "t", "--partitions=-1"]),
        "error: invalid value '-1' for '--partitions <PARTITIONS>': -1 is not in 0..=4294967295",
    );
    usage_error(
        &cairn_in(d, &["topic", "create", "t", "--partitions=4294967296"]),
        "error: invalid value '4294967296' for '--partitions <PARTITIONS>': 4294967296 is not in 0..=4294967295",
    );
    agent_serves(d, &[]);
}

/// The configuration file: missing, unreadable, not TOML, unknown keys, wrong types, values
/// out of range, S3 options object_store does not know. (That a TOML error is one line is
/// `an_invalid_config_file_is_a_one_line_error`.)
#[test]
fn config_file_errors_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let write = |name: &str, text: &[u8]| std::fs::write(d.join(name), text).unwrap();
    refused_exactly(
        &agent_in(d, &["--config", "missing.toml"]),
        "error: cannot read config file missing.toml: No such file or directory (os error 2)",
    );
    refused_exactly(
        &agent_in(d, &["--config", "."]),
        "error: cannot read config file .: Is a directory (os error 21)",
    );
    write("binary.toml", b"\xff\xfe not text");
    refused_exactly(
        &agent_in(d, &["--config", "binary.toml"]),
        "error: cannot read config file binary.toml: stream did not contain valid UTF-8",
    );
    for (name, text, first, problem) in [
        (
            "unquoted.toml",
            "listen = \n",
            "error: invalid config file unquoted.toml: line 1, column 10",
            "string values must be quoted",
        ),
        (
            "unknown.toml",
            "bogus = 1\n",
            "error: invalid config file unknown.toml: line 1, column 1",
            "unknown field `bogus`, expected one of `listen`",
        ),
        (
            "type.toml",
            "[tuning]\nlinger = 5\n",
            "error: invalid config file type.toml: line 2, column 10",
            "invalid type: integer `5`, expected a duration",
        ),
        (
            "address.toml",
            "listen = \"nope\"\n",
            "error: invalid config file address.toml: line 1, column 10",
            "invalid socket address syntax",
        ),
        (
            "unknown-tuning.toml",
            "[tuning]\nlingr = \"5ms\"\n",
            "error: invalid config file unknown-tuning.toml: line 2, column 1",
            "unknown field `lingr`",
        ),
    ] {
        write(name, text.as_bytes());
        let out = agent_in(d, &["--config", name]);
        let stderr = stderr_of(&out);
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        assert!(out.stdout.is_empty(), "{name}: {out:?}");
        assert_eq!(stderr.lines().count(), 1, "{name}: one line: {stderr}");
        assert!(stderr.starts_with(first), "{name}: {stderr}");
        assert!(stderr.contains(problem), "{name}: {stderr}");
    }
    write("range.toml", b"[tuning]\nlinger = \"0s\"\n");
    refused_exactly(
        &agent_in(d, &["--config", "range.toml"]),
        "error: invalid configuration: linger must be between 1ms and 60s, got 0ns",
    );
    write("size.toml", b"[tuning]\nmax_request_bytes = 1073741824\n");
    refused_exactly(
        &agent_in(d, &["--config", "size.toml"]),
        "error: invalid configuration: max_request_bytes must be at most 256 MiB, got 1073741824",
    );
    write(
        "s3.toml",
        b"object_store = \"s3://bucket\"\n[s3]\nbogus_option = \"x\"\n",
    );
    refused_exactly(
        &agent_in(d, &["--config", "s3.toml"]),
        "error: unknown S3 option `bogus_option`: Configuration key: 'bogus_option' is not valid for store 'S3'.",
    );
    // A good file next to the bad ones: the agent takes it.
    write(
        "good.toml",
        b"metadata = \"sqlite:./cairn-data/meta.sqlite\"\n[tuning]\nlinger = \"5ms\"\n",
    );
    agent_serves(d, &["--config", "good.toml"]);
}

/// Subcommands and flags that do not exist are usage errors (exit 2) naming them.
#[test]
fn unknown_subcommands_and_flags_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    usage_error(
        &cairn_in(d, &["frobnicate"]),
        "error: unrecognized subcommand 'frobnicate'",
    );
    usage_error(
        &cairn_in(d, &["topic", "frobnicate"]),
        "error: unrecognized subcommand 'frobnicate'",
    );
    usage_error(
        &cairn_in(d, &["agent", "--bogus"]),
        "error: unexpected argument '--bogus' found",
    );
    usage_error(
        &cairn_in(d, &["agent", "--listen", "nope"]),
        "error: invalid value 'nope' for '--listen <ADDR>': invalid socket address syntax",
    );
    usage_error(
        &cairn_in(d, &["agent", "--listen", "127.0.0.1:99999"]),
        "error: invalid value '127.0.0.1:99999' for '--listen <ADDR>': invalid socket address syntax",
    );
    // No subcommand at all: the help, on stderr, exit 2.
    let out = cairn_in(d, &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = stderr_of(&out);
    assert!(
        stderr.starts_with("Cairn: a diskless") && stderr.contains("Usage: cairn <COMMAND>"),
        "{stderr}"
    );
    agent_serves(d, &[]);
}

/// Addresses that cannot work: a port in use, a wildcard listen address with nothing to
/// advertise, an advertised address nobody answers at or without a port, an empty agent id.
#[test]
fn addresses_that_cannot_work_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    refused_exactly(
        &cairn_in(d, &["agent", "--listen", &addr.to_string()]),
        &format!("error: cannot listen on {addr}: Address already in use (os error 98)"),
    );
    drop(taken);
    // A wildcard listen advertises the address this host's name resolves to; where that is
    // loopback (as on our machines), the start is refused.
    if host_name_is_loopback() {
        let line = refused(
            &cairn_in(d, &["agent", "--listen", "0.0.0.0:0", "--insecure"]),
            "error: invalid configuration: the agent listens on 0.0.0.0:",
        );
        assert!(
            line.ends_with(
                ", which clients cannot dial, and this host's name resolves to no other address: give the address they reach it at with --advertise HOST:PORT"
            ),
            "{line}"
        );
    }
    refused_exactly(
        &agent_in(d, &["--advertise", "127.0.0.1:1"]),
        "error: invalid configuration: advertised address http://127.0.0.1:1 is not reachable from this agent (Connection refused (os error 111)); clients could not reach it either: fix --advertise",
    );
    refused_exactly(
        &agent_in(d, &["--advertise", "nohost"]),
        "error: invalid configuration: advertised address `nohost` has no port; give HOST:PORT, e.g. 10.0.0.5:7170",
    );
    refused_exactly(
        &agent_in(d, &["--agent-id", ""]),
        "error: invalid configuration: agent id is empty",
    );
    agent_serves(d, &[]);
}

/// Client commands given impossible values: refused in one line, by the command itself or
/// with the agent's answer; the agent serves on.
#[test]
fn client_commands_refuse_bad_input_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(dir.path(), &[]);
    let run = |args: &[&str], stdin: &str| client(&agent, args, stdin);
    assert!(
        run(&["topic", "create", "demo", "-p", "2"], "")
            .status
            .success()
    );
    for (args, stdin, line) in [
        (
            &["topic", "create", "bad/name"][..],
            "",
            "error: invalid argument: invalid topic name `bad/name`: character '/' is not allowed (use letters, digits, `.`, `_`, `-`)",
        ),
        (
            &["topic", "create", "x", "--partitions", "0"][..],
            "",
            "error: invalid argument: topic `x` needs at least 1 partition, got 0",
        ),
        (
            &["topic", "create", "x", "--retention", "0s"][..],
            "",
            "error: --retention must be at least 1ms (leave it out to keep records forever)",
        ),
        (
            &["topic", "create", "x", "--retention-bytes", "0"][..],
            "",
            "error: --retention-bytes must be at least 1 byte (leave it out to keep everything)",
        ),
        (
            &["topic", "create", "demo"][..],
            "",
            "error: already exists: topic `demo` already exists",
        ),
        (
            &["topic", "add-partitions", "demo", "--partitions", "1"][..],
            "",
            "error: invalid argument: topic `demo` has 2 partitions; the new count 1 must be larger",
        ),
        (
            &["topic", "delete-records", "demo", "-p", "0", "--before=-5"][..],
            "",
            "error: invalid argument: delete-records offset must be 0 or more, got -5",
        ),
        (
            &[
                "topic",
                "delete-records",
                "demo",
                "-p",
                "0",
                "--before",
                "5",
            ][..],
            "",
            "error: out of range: offset 5 is out of range for demo/0: readable offsets are 0..0",
        ),
        (
            &["produce", "nope"][..],
            "x\n",
            "error: not found: topic `nope` does not exist",
        ),
        (
            &["produce", "demo", "--partition", "9"][..],
            "x\n",
            "error: invalid argument: partition 9 is out of range: topic `demo` has 2 partitions",
        ),
        (
            &[
                "produce",
                "demo",
                "--partition",
                "0",
                "--expected-offset=-1",
            ][..],
            "x\n",
            "error: --expected-offset must be 0 or more, got -1",
        ),
        (
            &["consume", "demo", "--partition", "0", "--offset=-5"][..],
            "",
            "error: --offset must be 0 or more, got -5",
        ),
        (
            &["consume", "demo", "--partition", "0", "--offset", "7"][..],
            "",
            "error: out of range: offset 7 is out of range for demo/0: readable offsets are 0..0",
        ),
        (
            &["consume", "demo", "--group", "bad/group"][..],
            "",
            "error: invalid argument: invalid group name `bad/group`: use 1 to 249 characters of letters, digits, `.`, `_`, `-`",
        ),
        (
            &["topic", "list", "--endpoint", ""][..],
            "",
            "error: --endpoint is empty: give an agent address such as http://127.0.0.1:7170",
        ),
    ] {
        refused_exactly(&run(args, stdin), line);
    }
    usage_error(
        &run(&["produce", "demo", "--header", "novalue"], "x\n"),
        "error: invalid value 'novalue' for '--header <KEY=VALUE>': header `novalue` is not KEY=VALUE",
    );
    // Nothing of it was written; the agent takes and serves a good record.
    assert!(
        run(&["produce", "demo", "-p", "0"], "good\n")
            .status
            .success()
    );
    let out = run(&["consume", "demo", "--from-beginning"], "");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "good\n", "{out:?}");
}

// ---------------------------------------------------------------------------------------
// Found answered wrongly by this catalogue and fixed.

/// A config file that is not valid TOML should be refused in one line like every other
/// error (`main` promises "one line: the error and its causes"); before the fix the toml crate's
/// multi-line snippet with a caret is printed (5 lines).
#[test]
fn an_invalid_config_file_is_a_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (name, text, problem) in [
        (
            "unquoted.toml",
            "listen = \n",
            "string values must be quoted",
        ),
        ("unknown.toml", "bogus = 1\n", "unknown field `bogus`"),
        (
            "type.toml",
            "[tuning]\nlinger = 5\n",
            "invalid type: integer `5`, expected a duration",
        ),
    ] {
        std::fs::write(d.join(name), text).unwrap();
        let line = refused(
            &agent_in(d, &["--config", name]),
            &format!("error: invalid config file {name}: "),
        );
        assert!(line.contains("line "), "names the line: {line}");
        assert!(line.contains(problem), "{line}");
    }
    agent_serves(d, &[]);
}

/// A PostgreSQL URL that does not parse (a bad host, a port past 65535) is echoed with its
/// password, twice; a URL that parses has it replaced by `***`. Expected: never printed.
#[test]
fn a_bad_postgres_url_never_prints_its_password() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for spec in [
        "postgres://cairn:hunter2@127.0.0.1:99999/cairn",
        "postgres://cairn:hunter2@[bad/cairn",
    ] {
        let line = refused(
            &agent_in(d, &["--object-store", "memory://", "--metadata", spec]),
            "error: cannot open metadata store postgres://cairn:***@",
        );
        assert!(line.contains("bad PostgreSQL URL"), "{line}");
        assert!(!line.contains("hunter2"), "{line}");
    }
    agent_serves(d, &[]);
}

/// A metadata spec that can never work (a PostgreSQL URL without a host, a directory
/// where the SQLite file should be) is called "metadata store unavailable", the word for
/// a passing fault worth retrying. Expected: named as the configuration error it is.
#[test]
fn a_metadata_spec_that_can_never_work_is_not_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("dir.sqlite")).unwrap();
    for (spec, names) in [("postgres://", "host"), ("sqlite:dir.sqlite", "dir.sqlite")] {
        let line = refused(
            &agent_in(d, &["--object-store", "memory://", "--metadata", spec]),
            &format!("error: cannot open metadata store {spec}: "),
        );
        assert!(!line.contains("unavailable"), "{line}");
        assert!(line.contains(names), "{line}");
    }
    agent_serves(d, &[]);
}

/// An agent id with a newline is refused, but the refusal prints the id raw and so spans
/// two lines. Expected: one line, the id quoted (`"a\nb"`).
#[test]
fn an_agent_id_with_a_newline_is_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let line = refused(
        &agent_in(d, &["--agent-id", "a\nb"]),
        "error: invalid configuration: agent id ",
    );
    assert!(line.contains(r"contains '\n'"), "{line}");
    agent_serves(d, &[]);
}

/// Whether this host's name resolves only to loopback addresses (or not at all).
fn host_name_is_loopback() -> bool {
    use std::net::ToSocketAddrs;
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    (name.trim(), 0u16)
        .to_socket_addrs()
        .map(|mut a| a.all(|a| a.ip().is_loopback()))
        .unwrap_or(true)
}
