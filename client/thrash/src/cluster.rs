//! A thrash cluster: one monitor process and N OSD processes ([`crate::procs`]), the admin
//! client, and the waits the nemesis needs ("this OSD is up in the map again").
//!
//! An OSD counts as available once its process runs (not paused) and the monitor's map has it
//! up with the ports of its current incarnation; the nemesis keeps at most one OSD
//! unavailable at a time by waiting for that before its next fault.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use carmine_client::ClusterMap;

use crate::admin::{Admin, AdminError};
use crate::procs::{Bins, Mon, Osd, OsdState, ProcError};

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Proc(#[from] ProcError),
    #[error("monitor: {0}")]
    Admin(#[from] AdminError),
    #[error("osd{index} (osd.{id}) not up in the map {secs} s after it {after}")]
    NotUp {
        index: usize,
        id: u32,
        secs: u64,
        after: &'static str,
    },
    #[error("osd.{id} not marked down within {secs} s")]
    NotDown { id: u32, secs: u64 },
}

/// What a cluster is made of.
#[derive(Debug, Clone)]
pub struct Spec {
    pub osds: usize,
    pub img_mib: u64,
    pub mem_mib: u32,
    pub heartbeat_ms: u64,
    pub down_grace_ms: u64,
}

pub struct Cluster {
    pub bins: Bins,
    pub mon: Mon,
    pub admin: Admin,
    pub osds: Vec<Osd>,
}

impl Cluster {
    /// Starts the monitor, then `key` (a client key, before the OSDs boot so their first
    /// keyring has it) and the OSDs one after the other (DPDK's EAL maps every free hugepage
    /// while it initialises, so OSDs starting at once starve each other), and waits until the
    /// map has them all up. `tag` names the SPDK file prefixes and OSD uuids.
    pub async fn start(
        bins: &Bins,
        dir: &Path,
        tag: &str,
        spec: &Spec,
        key: &str,
    ) -> Result<(Cluster, carmine_client::Credentials), ClusterError> {
        let mon = Mon::start(bins, dir, spec.heartbeat_ms, spec.down_grace_ms).await?;
        let admin = Admin::connect(&mon.addr).await?;
        let creds = admin.auth_add(key).await?;
        let mut c = Cluster {
            bins: bins.clone(),
            mon,
            admin,
            osds: Vec::new(),
        };
        for i in 0..spec.osds {
            let keyfile = dir.join(format!("osd{i}.key"));
            c.admin.osd_new(&Osd::uuid(i), &keyfile).await?;
            let osd = Osd::new(dir, tag, i, &c.mon.addr, i % 2, spec.img_mib, spec.mem_mib)?;
            c.osds.push(osd);
            c.osds[i].start(bins).await?;
        }
        for i in 0..spec.osds {
            c.wait_up(i, Duration::from_secs(30), "started").await?;
        }
        Ok((c, creds))
    }

    pub async fn map(&self) -> Result<ClusterMap, ClusterError> {
        Ok(self.admin.map().await?)
    }

    /// The OSD whose monitor id is `id`.
    pub fn by_id(&self, id: u32) -> Option<usize> {
        self.osds
            .iter()
            .position(|o| o.starts > 0 && o.ready.id == id)
    }

    /// Waits until OSD `index` is up in the map with its current ports.
    pub async fn wait_up(
        &self,
        index: usize,
        within: Duration,
        after: &'static str,
    ) -> Result<(), ClusterError> {
        let o = &self.osds[index];
        let deadline = Instant::now() + within;
        loop {
            if let Ok(m) = self.admin.map().await {
                let up = m.osds.get(&o.ready.id).is_some_and(|m| {
                    m.up && m.shard_ports.iter().map(|&p| p as u16).eq(o
                        .ready
                        .ports
                        .iter()
                        .copied())
                });
                if up {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::NotUp {
                    index,
                    id: o.ready.id,
                    secs: within.as_secs(),
                    after,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the map has OSD `id` down.
    pub async fn wait_down(&self, id: u32, within: Duration) -> Result<(), ClusterError> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(m) = self.admin.map().await {
                if m.osds.get(&id).is_none_or(|o| !o.up) {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::NotDown {
                    id,
                    secs: within.as_secs(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// (Re)starts OSD `index` and waits until it is up in the map.
    pub async fn start_osd(&mut self, index: usize) -> Result<(), ClusterError> {
        self.osds[index].remove_hugepage_files();
        let bins = self.bins.clone();
        self.osds[index].start(&bins).await?;
        self.wait_up(index, Duration::from_secs(30), "restarted")
            .await
    }

    /// Brings every OSD back: resumes the paused ones, starts the down ones. Errors are
    /// returned per OSD (the others are still revived).
    pub async fn revive_all(&mut self) -> Vec<ClusterError> {
        let mut errors = Vec::new();
        for i in 0..self.osds.len() {
            match self.osds[i].state {
                OsdState::Running => {}
                OsdState::Paused => self.osds[i].resume(),
                OsdState::Down => {
                    if let Err(e) = self.start_osd(i).await {
                        errors.push(e);
                    }
                }
            }
        }
        for i in 0..self.osds.len() {
            if self.osds[i].state == OsdState::Running {
                if let Err(e) = self
                    .wait_up(i, Duration::from_secs(30), "was revived")
                    .await
                {
                    errors.push(e);
                }
            }
        }
        errors
    }

    /// Stops every OSD (SIGTERM, SIGKILL after 20 s), then the monitor. Logs stay.
    pub async fn stop(&mut self) {
        for o in &mut self.osds {
            o.terminate(Duration::from_secs(20)).await;
            o.remove_hugepage_files();
        }
        self.mon.stop().await;
    }

    /// Every log file of the cluster.
    pub fn logs(&self) -> Vec<PathBuf> {
        let mut v = vec![self.mon.log.clone()];
        v.extend(self.osds.iter().map(|o| o.log.clone()));
        v
    }
}
