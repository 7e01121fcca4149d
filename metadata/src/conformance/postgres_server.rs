//! A throwaway PostgreSQL server for tests: `initdb` and `pg_ctl` from Debian's
//! `postgresql` package in a temporary directory, on a free loopback port, trusted local
//! logins, no fsync (the data is thrown away). Run as the `postgres` user when the tests run
//! as root (PostgreSQL refuses to run as root). Stopped (immediate mode) and removed on drop.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A running throwaway server.
#[derive(Debug)]
pub struct TempPostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    /// Run the server's commands through `runuser -u postgres` (we are root).
    as_postgres: bool,
    /// Another address the server listens on, beside 127.0.0.1 (see
    /// [`TempPostgres::start_also_on`]).
    also: Option<std::net::IpAddr>,
}

/// Where the server binaries are: `CAIRN_PG_BIN`, else the newest
/// `/usr/lib/postgresql/*/bin` holding `initdb`, else `PATH`.
fn bin_dir() -> Result<PathBuf, String> {
    if let Ok(dir) = std::env::var("CAIRN_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| {
                    let version = e.file_name().to_str()?.parse::<u32>().ok()?;
                    let bin = e.path().join("bin");
                    bin.join("initdb").exists().then_some((version, bin))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    if let Some((_, bin)) = found.pop() {
        return Ok(bin);
    }
    let which = Command::new("sh")
        .args(["-c", "command -v initdb"])
        .output()
        .map_err(|e| e.to_string())?;
    let path = String::from_utf8_lossy(&which.stdout).trim().to_string();
    match Path::new(&path).parent() {
        Some(dir) if which.status.success() && !path.is_empty() => Ok(dir.to_path_buf()),
        _ => Err(
            "PostgreSQL is not installed: no initdb in /usr/lib/postgresql/*/bin or on PATH \
             (Debian: apt-get install postgresql; or set CAIRN_PG_BIN)"
                .into(),
        ),
    }
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

impl TempPostgres {
    /// Creates a cluster and starts the server; waits until it accepts connections.
    pub fn start() -> Result<Self, String> {
        Self::start_with(None)
    }

    /// [`TempPostgres::start`], listening on `address` too and trusting logins from
    /// `network` (CIDR), e.g. a Docker network's gateway and subnet, so containers on that
    /// network reach it.
    pub fn start_also_on(address: std::net::IpAddr, network: &str) -> Result<Self, String> {
        if network.parse::<std::net::IpAddr>().is_ok() || !network.contains('/') {
            return Err(format!("`{network}` is not a CIDR network"));
        }
        Self::start_with(Some((address, network)))
    }

    fn start_with(also: Option<(std::net::IpAddr, &str)>) -> Result<Self, String> {
        let bin = bin_dir()?;
        let as_postgres = is_root();
        let dir = tempfile::Builder::new()
            .prefix("cairn-pg-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        if as_postgres {
            let chown = Command::new("chown")
                .args(["-R", "postgres:"])
                .arg(dir.path())
                .status()
                .map_err(|e| e.to_string())?;
            if !chown.success() {
                return Err("cannot hand the temporary directory to the postgres user".into());
            }
        }
        let mut pg = TempPostgres {
            dir,
            bin,
            port: 0,
            as_postgres,
            also: also.map(|(a, _)| a),
        };
        let data = pg.dir.path().join("data");
        pg.run(
            "initdb",
            &[
                "-D",
                &data.to_string_lossy(),
                "-U",
                "cairn",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        )?;
        if let Some((_, network)) = also {
            let hba = data.join("pg_hba.conf");
            let mut text = std::fs::read_to_string(&hba).map_err(|e| e.to_string())?;
            text.push_str(&format!("host all all {network} trust\n"));
            std::fs::write(&hba, text).map_err(|e| e.to_string())?;
        }
        // A free port can be taken between the check and the start: try a few.
        let mut last = String::new();
        for _ in 0..5 {
            pg.port = free_port()?;
            match pg.start_again() {
                Ok(()) => return Ok(pg),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Starts the server (again, after [`TempPostgres::stop`]) on its port with its data:
    /// a restart, as after a crash.
    pub fn start_again(&self) -> Result<(), String> {
        let data = self.dir.path().join("data");
        let listen = match self.also {
            Some(a) => format!("127.0.0.1,{a}"),
            None => "127.0.0.1".to_string(),
        };
        let options = format!(
            "-p {} -k {} -c listen_addresses={listen} -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300",
            self.port,
            self.dir.path().display()
        );
        self.run(
            "pg_ctl",
            &[
                "start",
                "-w",
                "-t",
                "60",
                "-D",
                &data.to_string_lossy(),
                "-l",
                &self.dir.path().join("server.log").to_string_lossy(),
                "-o",
                &options,
            ],
        )
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<(), String> {
        let exe = self.bin.join(program);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let out = cmd
            .args(args)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
        if out.status.success() {
            return Ok(());
        }
        let log = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        Err(format!(
            "{program} failed: {}{}\n{log}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }

    /// The URL of database `db` (which [`TempPostgres::create_database`] makes).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://cairn@127.0.0.1:{}/{db}", self.port)
    }

    /// The URL of database `db` at the other address it listens on (the host's address on
    /// a Docker network), when started with [`TempPostgres::start_also_on`].
    pub fn url_on_also(&self, db: &str) -> Option<String> {
        self.also.map(|a| {
            format!(
                "postgres://cairn@{}/{db}",
                std::net::SocketAddr::new(a, self.port)
            )
        })
    }

    /// Creates database `db` and returns its URL.
    pub async fn create_database(&self, db: &str) -> Result<String, String> {
        let (client, conn) = tokio_postgres::connect(&self.url("postgres"), tokio_postgres::NoTls)
            .await
            .map_err(|e| e.to_string())?;
        let task = tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE \"{db}\""))
            .await
            .map_err(|e| e.to_string())?;
        drop(client);
        let _ = task.await;
        Ok(self.url(db))
    }

    /// Stops the server now (immediate mode: like a crash, as a restart test wants).
    pub fn stop(&self) -> Result<(), String> {
        let data = self.dir.path().join("data");
        self.run(
            "pg_ctl",
            &[
                "stop",
                "-w",
                "-m",
                "immediate",
                "-D",
                &data.to_string_lossy(),
            ],
        )
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
