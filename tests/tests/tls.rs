//! TLS end to end, with real agent processes and certificates made by the test (rcgen):
//! the gRPC port serves TLS and rotates its certificate without a restart; mTLS admits
//! only clients with a certificate of the client CA; the zone read cache's peer port
//! admits only agents; and each way of getting it wrong (plain text against TLS, TLS
//! against plain text, another CA, an expired certificate, no client certificate) gives a
//! clear error on both sides. Also: an agent on a non-loopback address without TLS refuses
//! to start unless told `--insecure`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cairn_client::{
    Admin, Cluster, ClusterConfig, Producer, ProducerConfig, ProducerRecord, Security, TopicOptions,
};
use cairn_tests::pki::{Ca, Pair};
use cairn_tests::{AgentProcess, cairn_bin, eventually, file_agent_args, temp_dir, verify_exact};

/// The client's error, with its causes, as one string.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Security trusting `ca`, presenting `identity` when given.
// A test helper over files the test just wrote: failing to read them is a broken test.
#[allow(clippy::unwrap_used)]
fn tls(ca: &Path, identity: Option<&Pair>) -> Security {
    Security::tls_from_files(
        Some(ca),
        identity.map(|p| p.cert.as_path()),
        identity.map(|p| p.key.as_path()),
    )
    .unwrap()
}

/// Asks the agent at `endpoint` for its status with `security`; the error as text.
async fn status(endpoint: &str, security: &Security) -> Result<(), String> {
    let agent = Cluster::single(endpoint, security)
        .await
        .map_err(|e| chain(&e))?;
    Admin::new(agent)
        .agent_status()
        .await
        .map(|_| ())
        .map_err(|e| chain(&e))
}

/// `endpoint` as `host:port`.
fn host_port(endpoint: &str) -> &str {
    endpoint.split_once("://").map_or(endpoint, |(_, hp)| hp)
}

/// The agent's log so far.
fn log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[tokio::test]
async fn tls_serves_rotates_and_refuses_each_mistake_clearly() -> anyhow::Result<()> {
    let dir = temp_dir()?;
    let d = dir.path();
    let ca1 = Ca::new(d, "ca1")?;
    let ca2 = Ca::new(d, "ca2")?;
    let first = ca1.issue("agent-first")?;
    // The files the agent reads; rotation replaces their contents.
    let served = Pair {
        cert: d.join("served.crt"),
        key: d.join("served.key"),
    };
    std::fs::copy(&first.cert, &served.cert)?;
    std::fs::copy(&first.key, &served.key)?;
    let mut args = file_agent_args(d);
    args.extend([
        "--tls-cert".into(),
        served.cert.display().to_string(),
        "--tls-key".into(),
        served.key.display().to_string(),
        "--tls-peer-ca".into(),
        ca1.cert.display().to_string(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let log_path = d.join("agent.log");
    let agent = AgentProcess::start_logging("127.0.0.1:0", &args, &[], &log_path)?;
    assert!(agent.endpoint.starts_with("https://"), "{}", agent.endpoint);
    let hp = host_port(&agent.endpoint).to_string();

    // The CLI over TLS, the CA from a flag and from CAIRN_CA.
    let out = Command::new(cairn_bin()?)
        .args([
            "topic",
            "create",
            "secure",
            "--partitions",
            "2",
            "--endpoint",
            &hp,
        ])
        .args(["--ca", ca1.cert.to_str().unwrap()])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(cairn_bin()?)
        .args(["topic", "list", "--endpoint", &hp])
        .env("CAIRN_CA", &ca1.cert)
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("secure"));

    // Records through the SDK over TLS, all read back.
    let cluster = Cluster::connect(
        ClusterConfig::new([agent.endpoint.clone()]).security(tls(&ca1.cert, None)),
    )
    .await?;
    let sent = cairn_tests::produce_workload_through(
        vec![cluster.clone()],
        "secure",
        200,
        ProducerConfig::default(),
    )
    .await?;
    verify_exact(
        &sent,
        &cairn_tests::read_all_through(cluster.clone(), "secure").await?,
    )?;

    // Multi-MiB requests and responses: each crosses TLS in HTTP/2 frames of up to 1 MiB
    // (both ends accept them), a frame spanning 64 TLS records.
    Admin::new(cluster.clone())
        .create_topic("large", 1, TopicOptions::default())
        .await?;
    let producer = Producer::new(cluster.clone(), ProducerConfig::default());
    // Values zstd cannot shrink, so the frames stay large.
    let values: Vec<bytes::Bytes> = (0..24)
        .map(|i| cairn_tests::incompressible(i, 256 << 10))
        .collect();
    let mut deliveries = Vec::new();
    for v in &values {
        deliveries.push(
            producer
                .send(ProducerRecord::new("large", v.clone()))
                .await?,
        );
    }
    for d in deliveries {
        d.await?;
    }
    let read = cairn_tests::read_all_through(cluster, "large").await?;
    assert_eq!(read.len(), values.len());
    for (i, (r, v)) in read.iter().zip(&values).enumerate() {
        assert_eq!(r.offset, i as i64);
        assert!(r.value == *v, "record {i} came back different");
    }

    // Plain text against the TLS port: the client is told, and the agent logs it.
    let plain = status(&format!("http://{hp}"), &Security::default())
        .await
        .unwrap_err();
    eprintln!("plain text against TLS: {plain}");
    let e = plain.to_lowercase();
    assert!(e.contains("tls") || e.contains("https"), "{plain}");
    eventually("the agent logs the failed handshake", || async {
        log(&log_path).contains("TLS handshake failed")
    })
    .await;
    // The plain-text address with TLS settings is refused before dialling.
    let e = status(&format!("http://{hp}"), &tls(&ca1.cert, None))
        .await
        .unwrap_err();
    assert!(e.contains("write https://"), "{e}");
    // Another CA.
    let other = status(&hp, &tls(&ca2.cert, None)).await.unwrap_err();
    eprintln!("another CA: {other}");
    assert!(
        other.contains("UnknownIssuer") || other.contains("certificate"),
        "{other}"
    );
    // The CLI says the same in its one-line error.
    let out = Command::new(cairn_bin()?)
        .args([
            "status",
            "--endpoint",
            &hp,
            "--ca",
            ca2.cert.to_str().unwrap(),
        ])
        .output()?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("certificate"), "{stderr}");

    // Rotation: the files now hold a certificate of ca2, served without a restart.
    let second = ca2.issue("agent-second")?;
    std::fs::copy(&second.key, &served.key)?;
    std::fs::copy(&second.cert, &served.cert)?;
    let started = Instant::now();
    eventually("the rotated certificate is served", || async {
        status(&hp, &tls(&ca2.cert, None)).await.is_ok()
    })
    .await;
    eprintln!("rotation served after {:?}", started.elapsed());
    assert!(status(&hp, &tls(&ca1.cert, None)).await.is_err());
    assert!(log(&log_path).contains("TLS certificate reloaded"));

    // An expired certificate: the client names it.
    let expired = ca2.issue_with("agent-expired", true)?;
    std::fs::copy(&expired.key, &served.key)?;
    std::fs::copy(&expired.cert, &served.cert)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let last = loop {
        match status(&hp, &tls(&ca2.cert, None)).await {
            Err(e) if e.contains("expired") => break e,
            other => assert!(Instant::now() < deadline, "still {other:?} after 30s"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("expired: {last}");
    agent.stop()?;

    // TLS against a plain-text port.
    let plain_agent = AgentProcess::on_files(&d.join("plain"))?;
    let e = status(host_port(&plain_agent.endpoint), &tls(&ca1.cert, None))
        .await
        .unwrap_err();
    eprintln!("TLS against plain text: {e}");
    let lower = e.to_lowercase();
    assert!(lower.contains("tls") || lower.contains("http://"), "{e}");
    plain_agent.stop()?;
    Ok(())
}

#[tokio::test]
async fn mutual_tls_admits_only_certified_clients_and_agents_on_the_peer_port() -> anyhow::Result<()>
{
    let dir = temp_dir()?;
    let d = dir.path();
    let ca = Ca::new(d, "ca")?;
    let stranger_ca = Ca::new(d, "stranger-ca")?;
    let agent_pair = ca.issue("agent")?;
    let client = ca.issue("client")?;
    let stranger = stranger_ca.issue("stranger")?;
    let config = d.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\n\
             [auth]\nservice_principal = \"agent\"\n\
             [tuning]\nchunk_bytes = 65536\nlinger = \"20ms\"\n",
            agent_pair.cert, agent_pair.key, ca.cert
        ),
    )?;
    let mut agents = Vec::new();
    for (i, id) in ["a1", "a2"].iter().enumerate() {
        let mut args = file_agent_args(d);
        args.extend(
            [
                "--config",
                config.to_str().unwrap(),
                "--agent-id",
                id,
                "--zone",
                "z1",
                "--agent-lease",
                "2s",
            ]
            .map(String::from),
        );
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let log_path = d.join(format!("{id}.log"));
        agents.push((
            AgentProcess::start_logging(&format!("127.0.0.{}:0", i + 1), &args, &[], &log_path)?,
            log_path,
        ));
    }
    let endpoints: Vec<String> = agents.iter().map(|(a, _)| a.endpoint.clone()).collect();

    // No client certificate, or one of another CA: refused, and the agent says why.
    let none = status(&endpoints[0], &tls(&ca.cert, None))
        .await
        .unwrap_err();
    eprintln!("no client certificate: {none}");
    let foreign = status(&endpoints[0], &tls(&ca.cert, Some(&stranger)))
        .await
        .unwrap_err();
    eprintln!("a client certificate of another CA: {foreign}");
    eventually("the agent logs the refused client certificates", || async {
        let l = log(&agents[0].1);
        l.contains("TLS handshake failed") && l.contains("UnknownIssuer")
    })
    .await;

    // With the certificate: the whole path works, and the zone's agents read each
    // other's chunks over the mTLS peer port.
    let security = tls(&ca.cert, Some(&client));
    let me = Admin::new(Cluster::single(&endpoints[0], &security).await?)
        .agent_status()
        .await?;
    // The certificate's common name is the caller's principal.
    assert_eq!(me.caller_principal, "client");
    let admin = Admin::new(
        Cluster::connect(ClusterConfig::new(endpoints.clone()).security(security.clone())).await?,
    );
    admin
        .create_topic("mutual", 4, cairn_client::TopicOptions::default())
        .await?;
    let mut config = ClusterConfig::new(endpoints.clone())
        .security(security.clone())
        .zone("z1");
    config.refresh_interval = Duration::from_millis(300);
    let cluster = Cluster::connect(config).await?;
    eventually("the client sees both agents", || {
        let c = cluster.clone();
        async move {
            let _ = c.refresh().await;
            c.agents().len() == 2
        }
    })
    .await;
    let sent = cairn_tests::produce_workload_through(
        vec![cluster.clone()],
        "mutual",
        2_000,
        ProducerConfig::default(),
    )
    .await?;
    verify_exact(
        &sent,
        &cairn_tests::read_all_through(cluster.clone(), "mutual").await?,
    )?;
    // Through each agent alone too: the one that does not own a chunk asks the other.
    for e in &endpoints {
        let one = Cluster::single(e, &security).await?;
        verify_exact(&sent, &cairn_tests::read_all_through(one, "mutual").await?)?;
    }
    let peer_reads = || async {
        let (mut reads, mut failures) = (0, 0);
        for e in &endpoints {
            let s = Admin::new(Cluster::single(e, &security).await?)
                .agent_status()
                .await?;
            reads += s.zone_cache_peer_reads;
            failures += s.zone_cache_peer_failures;
        }
        anyhow::Ok((reads, failures))
    };
    let (mut from_peers, mut failures) = peer_reads().await?;
    // Chunks are owned by hashing their object's (random) name: a few segments can all
    // fall to the agent that reads them. More segments, until one falls to the other.
    let mut total = sent.len();
    for _ in 0..10 {
        if from_peers > 0 {
            break;
        }
        total += cairn_tests::produce_workload_through(
            vec![cluster.clone()],
            "mutual",
            500,
            ProducerConfig::default(),
        )
        .await?
        .len();
        for e in &endpoints {
            let one = Cluster::single(e, &security).await?;
            let read = cairn_tests::read_all_through(one, "mutual").await?;
            assert_eq!(read.len(), total, "every record through {e}");
        }
        (from_peers, failures) = peer_reads().await?;
    }
    eprintln!("peer port over mTLS: {from_peers} reads from the owner, {failures} failures");
    assert!(from_peers > 0, "no agent read a chunk from the other");
    assert_eq!(failures, 0);

    // The peer port admits no client that is not an agent: plain text and a client of
    // another CA are both refused.
    let admin = Admin::new(Cluster::single(&endpoints[0], &security).await?);
    let peer = admin
        .describe_cluster()
        .await?
        .agents
        .into_iter()
        .map(|a| a.peer_address)
        .find(|a| !a.is_empty())
        .expect("a peer address");
    assert!(peer.starts_with("https://"), "{peer}");
    let health = |security: Security, address: String| async move {
        let channel = Cluster::single(&address, &security)
            .await
            .map_err(|e| chain(&e))?;
        let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
        client
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .map(|_| ())
            .map_err(|e| chain(&e))
    };
    let outsider = health(tls(&ca.cert, Some(&stranger)), peer.clone()).await;
    assert!(outsider.is_err(), "a stranger reached the peer port");
    let plain = health(Security::default(), peer.replace("https://", "http://")).await;
    assert!(plain.is_err(), "plain text reached the peer port");
    // A client's certificate of the same CA passes the handshake, but the peer port reads
    // stored bytes for the service principal only (the agents' certificates name `agent`).
    let read = |who: Pair| {
        let (ca, peer) = (ca.cert.clone(), peer.clone());
        async move {
            let channel = Cluster::single(&peer, &tls(&ca, Some(&who))).await.unwrap();
            cairn_proto::v2::peer_service_client::PeerServiceClient::new(channel)
                .read_range(cairn_proto::v2::ReadRangeRequest {
                    object_key: "segments/00/none.seg".into(),
                    offset: 0,
                    length: 16,
                })
                .await
        }
    };
    let refused = read(client.clone()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("`client`"), "{refused:?}");
    let agent_read = read(agent_pair.clone()).await.unwrap_err();
    assert_eq!(agent_read.code(), tonic::Code::NotFound, "{agent_read:?}");
    for (a, _) in agents {
        a.stop()?;
    }
    Ok(())
}

/// A free port on loopback (the OS may hand it out again, but not within this test).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

#[test]
fn the_metrics_endpoint_serves_tls_when_asked() -> anyhow::Result<()> {
    let dir = temp_dir()?;
    let d = dir.path();
    let ca = Ca::new(d, "ca")?;
    let pair = ca.issue("agent")?;
    let metrics = format!("127.0.0.1:{}", free_port()?);
    let mut args = file_agent_args(d);
    args.extend([
        "--tls-cert".into(),
        pair.cert.display().to_string(),
        "--tls-key".into(),
        pair.key.display().to_string(),
        "--tls-peer-ca".into(),
        ca.cert.display().to_string(),
        "--metrics-tls".into(),
        "--metrics-listen".into(),
        metrics.clone(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = AgentProcess::start(&args, &[])?;
    let curl = |url: &str, ca: Option<&Path>| -> anyhow::Result<(bool, String)> {
        let mut c = Command::new("curl");
        c.args(["-sS", "--max-time", "10", url]);
        if let Some(ca) = ca {
            c.arg("--cacert").arg(ca);
        }
        let out = c.output()?;
        Ok((
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ))
    };
    // Over TLS, trusted by the CA: metrics and both probes.
    let (ok, body) = curl(&format!("https://{metrics}/metrics"), Some(&ca.cert))?;
    assert!(ok && body.contains("cairn_"), "{body}");
    let (ok, body) = curl(&format!("https://{metrics}/healthz"), Some(&ca.cert))?;
    assert!(ok, "{body}");
    // Not trusted, or plain text: refused.
    let (ok, body) = curl(&format!("https://{metrics}/metrics"), None)?;
    assert!(!ok, "an untrusted certificate was accepted: {body}");
    let (ok, body) = curl(&format!("http://{metrics}/metrics"), None)?;
    assert!(
        !ok && !body.contains("cairn_"),
        "plain text was served: {body}"
    );
    agent.stop()?;
    Ok(())
}

#[test]
fn a_non_loopback_address_without_tls_needs_insecure() -> anyhow::Result<()> {
    let dir = temp_dir()?;
    let out = Command::new(cairn_bin()?)
        .arg("agent")
        .args(file_agent_args(dir.path()))
        .args(["--listen", "0.0.0.0:0"])
        .env("CAIRN_LOG", "warn")
        .output()?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("refusing to serve 0.0.0.0:0 without TLS or authentication")
            && stderr.contains("--insecure"),
        "{stderr}"
    );
    // Nothing was created by the refused start.
    assert!(!dir.path().join("objects").exists());
    Ok(())
}
