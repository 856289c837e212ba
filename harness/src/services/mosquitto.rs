//! A mosquitto the harness runs itself (`--mosquitto PROGRAM`): one process per scenario on a free
//! port, so a scenario can take the broker away and bring it back (`broker: go_away` kills the
//! process, `come_back` starts it again on the same port). No persistence: a new process starts
//! empty, as a crashed broker without a database does.

use std::io::Read;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a started mosquitto has to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Fresh ports tried when another process takes the one picked before mosquitto binds it.
const PORT_ATTEMPTS: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum MosquittoError {
    #[error("cannot start {program}: {source}")]
    Spawn { program: PathBuf, source: std::io::Error },
    #[error("cannot write mosquitto's configuration: {0}")]
    Config(std::io::Error),
    #[error("cannot find a free port on {0}: {1}")]
    Port(IpAddr, std::io::Error),
    #[error("{program} exited ({status}) before it accepted connections on {addr}; it said: {said}")]
    Exited { program: PathBuf, addr: SocketAddr, status: std::process::ExitStatus, said: String },
    #[error("{program} did not accept connections on {addr} within {START_TIMEOUT:?}")]
    NoListener { program: PathBuf, addr: SocketAddr },
}

pub struct Mosquitto {
    program: PathBuf,
    addr: SocketAddr,
    /// Holds the configuration file for as long as the broker may be restarted.
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Mosquitto {
    /// Starts `program` listening on a free port of `listen`; returns once it accepts connections.
    pub fn start(program: &Path, listen: IpAddr) -> Result<Mosquitto, MosquittoError> {
        let mut last = None;
        for _ in 0..PORT_ATTEMPTS {
            let dir = tempfile::tempdir().map_err(MosquittoError::Config)?;
            let port = TcpListener::bind((listen, 0))
                .and_then(|l| l.local_addr())
                .map_err(|e| MosquittoError::Port(listen, e))?
                .port();
            let mut m = Mosquitto {
                program: program.to_path_buf(),
                addr: SocketAddr::new(listen, port),
                dir,
                child: None,
            };
            match m.come_back() {
                Ok(()) => return Ok(m),
                // Another process took the port between our probe and mosquitto's bind.
                Err(e @ MosquittoError::Exited { .. }) => {
                    tracing::debug!(error = %e, "mosquitto did not start; trying another port");
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("at least one attempt"))
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Kills the broker: every connection ends, new ones are refused.
    pub fn go_away(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the broker (again) on its port; returns once it accepts connections.
    pub fn come_back(&mut self) -> Result<(), MosquittoError> {
        if self.child.is_some() {
            return Ok(());
        }
        let conf = self.dir.path().join("mosquitto.conf");
        let text = format!(
            "# written by otahil for one scenario\nlistener {} {}\nallow_anonymous true\npersistence false\nlog_dest stderr\nlog_type error\nlog_type warning\n",
            self.addr.port(),
            self.addr.ip()
        );
        std::fs::write(&conf, text).map_err(MosquittoError::Config)?;
        let child = Command::new(&self.program)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| MosquittoError::Spawn { program: self.program.clone(), source })?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let child = self.child.as_mut().expect("just spawned");
            if let Ok(Some(status)) = child.try_wait() {
                let mut said = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut said);
                }
                self.child = None;
                return Err(MosquittoError::Exited {
                    program: self.program.clone(),
                    addr: self.addr,
                    status,
                    said: said.trim().to_string(),
                });
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.go_away();
                return Err(MosquittoError::NoListener { program: self.program.clone(), addr: self.addr });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.go_away();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn program() -> Option<PathBuf> {
        ["/usr/sbin/mosquitto", "/usr/bin/mosquitto", "/usr/local/sbin/mosquitto"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
    }

    #[test]
    fn a_missing_program_is_a_clear_error() {
        let e = Mosquitto::start(Path::new("/nonexistent/mosquitto"), Ipv4Addr::LOCALHOST.into())
            .err()
            .expect("no such program");
        assert!(e.to_string().starts_with("cannot start /nonexistent/mosquitto:"), "{e}");
    }

    #[test]
    fn a_program_that_exits_at_once_says_what_it_printed() {
        // `sh -c` takes `-c CONF` as a script path that does not exist: it complains and exits.
        let e =
            Mosquitto::start(Path::new("/bin/sh"), Ipv4Addr::LOCALHOST.into()).err().expect("not a broker");
        let MosquittoError::Exited { said, .. } = &e else { panic!("{e}") };
        assert!(!said.is_empty(), "{e}");
    }

    #[test]
    fn goes_away_and_comes_back_on_the_same_port() {
        let Some(program) = program() else {
            eprintln!("skipped: no mosquitto installed (apt install mosquitto; .ci/run does)");
            return;
        };
        let mut m = Mosquitto::start(&program, Ipv4Addr::LOCALHOST.into()).expect("mosquitto starts");
        let addr = m.addr();
        let before = TcpStream::connect(addr).expect("accepts");
        m.go_away();
        let mut buf = [0u8; 1];
        let _ = before.set_read_timeout(Some(Duration::from_secs(5)));
        assert!(
            matches!((&before).read(&mut buf), Ok(0) | Err(_)),
            "a connection from before ends when the broker goes away"
        );
        assert!(TcpStream::connect(addr).is_err(), "refused while away");
        m.come_back().expect("comes back");
        assert_eq!(m.addr(), addr);
        TcpStream::connect(addr).expect("accepts again on the same port");
    }
}
