//! A private OCI registry for a test: Debian's `docker-registry` (distribution 2.8) with its own
//! storage on a free 127.0.0.1 port, stopped when dropped. `.ci/run` installs the package.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct OciRegistry {
    child: Child,
    /// `127.0.0.1:<port>`.
    pub address: String,
    /// Where it keeps blobs and manifests (tests tamper with them).
    pub storage: PathBuf,
    _dir: tempfile::TempDir,
}

impl OciRegistry {
    /// Starts one (`$MOA_DOCKER_REGISTRY` or `docker-registry` on the PATH) and waits for its port.
    pub fn start() -> OciRegistry {
        let binary =
            std::env::var("MOA_DOCKER_REGISTRY").unwrap_or_else(|_| "docker-registry".into());
        let dir = tempfile::tempdir().expect("a temp dir");
        let storage = dir.path().join("storage");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
                storage.display()
            ),
        )
        .expect("the registry's config");
        let child = Command::new(&binary)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {binary}: {e} (install Debian's docker-registry; .ci/run does)"
                )
            });
        let deadline = Instant::now() + Duration::from_secs(20);
        while !crate::port::listens(port) {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        OciRegistry {
            child,
            address: format!("127.0.0.1:{port}"),
            storage,
            _dir: dir,
        }
    }
}

impl Drop for OciRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
