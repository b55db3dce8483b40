//! A vhost-user-blk export of a file by qemu-storage-daemon: the backend the SPDK virtio bdev
//! attaches to in the CI mode (no NVMe here). The daemon is killed when the value is dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Why the export could not start.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("cannot start qemu-storage-daemon (Debian package qemu-system-common): {0}")]
    Spawn(std::io::Error),
    #[error("qemu-storage-daemon did not create {0} within {1:?}")]
    NoSocket(PathBuf, Duration),
    #[error("qemu-storage-daemon exited early: {0}")]
    Exited(std::process::ExitStatus),
}

/// A running qemu-storage-daemon exporting one file as vhost-user-blk.
#[derive(Debug)]
pub struct VhostBlkExport {
    child: Child,
    socket: PathBuf,
}

impl VhostBlkExport {
    /// Exports `image` (a raw file) writable on the unix socket `socket`, and waits (bounded)
    /// until the socket exists.
    pub fn start(image: &Path, socket: &Path) -> Result<Self, ExportError> {
        let child = Command::new("qemu-storage-daemon")
            .arg("--blockdev")
            .arg(format!("driver=file,node-name=disk0,filename={}", image.display()))
            .arg("--export")
            .arg(format!(
                "type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,addr.path={},writable=on",
                socket.display()
            ))
            .stdin(Stdio::null())
            .spawn()
            .map_err(ExportError::Spawn)?;
        let mut me = Self {
            child,
            socket: socket.to_path_buf(),
        };
        let limit = Duration::from_secs(10);
        let deadline = Instant::now() + limit;
        while !socket.exists() {
            if let Ok(Some(st)) = me.child.try_wait() {
                return Err(ExportError::Exited(st));
            }
            if Instant::now() > deadline {
                return Err(ExportError::NoSocket(socket.to_path_buf(), limit));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(me)
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

impl Drop for VhostBlkExport {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
