//! Startup checks the OSD runs before it touches DPDK or SPDK.
//!
//! DPDK and SPDK fail late and cryptically when the machine is not prepared (an EAL that cannot
//! map memory, a PCI device still bound to the kernel driver). These checks run first and turn
//! each condition into a [`PreflightError`] whose message names the fix: the hugepage script,
//! the vfio binding script, the missing capability.
//!
//! Every check reads the kernel's files under a configurable root ([`System::root`], `/` in
//! production), so the same code is exercised in unit tests against real file formats laid out in
//! a temporary directory. The checks only read; they never change the system.

use std::fs;
use std::path::PathBuf;

/// Why the machine is not ready. Each message says what to run or change.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PreflightError {
    #[error(
        "no free hugepages: {free} free of {total} (need {need} pages of 2 MiB); \
         run `hugepages/hugepages.sh reserve {need}` as root"
    )]
    NoHugepages { free: u64, total: u64, need: u64 },
    #[error(
        "hugetlbfs is not mounted; run `hugepages/hugepages.sh reserve N` as root \
         (it mounts /dev/hugepages)"
    )]
    NoHugetlbfs,
    #[error(
        "missing privileges: {missing} (run the OSD as root, or grant the capabilities with \
         `setcap cap_ipc_lock,cap_sys_admin,cap_net_raw,cap_sys_rawio+ep carmine-osd`)"
    )]
    Privileges { missing: String },
    #[error(
        "PCI device {addr} is configured but the IOMMU is off (/sys/kernel/iommu_groups is \
         empty); enable it on the kernel command line (intel_iommu=on or amd_iommu=on) and reboot"
    )]
    NoIommu { addr: String },
    #[error(
        "PCI device {addr} is configured but vfio is not available ({why}); \
         run `scripts/bind-vfio {addr}` as root"
    )]
    NoVfio { addr: String, why: String },
    #[error(
        "PCI device {addr} is bound to {driver}, not vfio-pci; run `scripts/bind-vfio {addr}` \
         as root"
    )]
    NotBoundToVfio { addr: String, driver: String },
    #[error("PCI device {addr} does not exist (no {path}); check the address with `lspci -D`")]
    NoSuchPciDevice { addr: String, path: String },
    #[error("bdev {name:?} does not exist; the bdevs present are: {present}")]
    NoSuchBdev { name: String, present: String },
    #[error("cannot read {path}: {reason}")]
    Unreadable { path: String, reason: String },
}

/// Hugepage pool of the default page size, from `/proc/meminfo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hugepages {
    pub total: u64,
    pub free: u64,
    pub page_kib: u64,
}

impl Hugepages {
    /// Memory reserved in the pool, in MiB (1 GiB pages count 1024, 2 MiB pages 2).
    pub fn total_mib(&self) -> u64 {
        self.total * self.page_kib / 1024
    }
}

/// The kernel's view, rooted at `root` (`/` on a real machine).
#[derive(Debug, Clone)]
pub struct System {
    root: PathBuf,
}

impl Default for System {
    fn default() -> Self {
        Self::root("/")
    }
}

/// Capabilities DPDK/SPDK need without root: lock hugepage memory, open raw sockets
/// (af_packet), map device memory and read physical addresses.
const NEEDED_CAPS: &[(u32, &str)] = &[
    (14, "CAP_IPC_LOCK"),
    (13, "CAP_NET_RAW"),
    (21, "CAP_SYS_ADMIN"),
    (17, "CAP_SYS_RAWIO"),
];

impl System {
    /// A view of the kernel files under `root`.
    pub fn root(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.root.join(p.trim_start_matches('/'))
    }

    fn read(&self, p: &str) -> Result<String, PreflightError> {
        let path = self.path(p);
        fs::read_to_string(&path).map_err(|e| PreflightError::Unreadable {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    }

    /// The hugepage pool.
    pub fn hugepages(&self) -> Result<Hugepages, PreflightError> {
        let meminfo = self.read("/proc/meminfo")?;
        let field = |key: &str| -> u64 {
            meminfo
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Ok(Hugepages {
            total: field("HugePages_Total:"),
            free: field("HugePages_Free:"),
            page_kib: field("Hugepagesize:"),
        })
    }

    /// At least `need` free hugepages and a hugetlbfs mount.
    pub fn check_hugepages(&self, need: u64) -> Result<Hugepages, PreflightError> {
        let hp = self.hugepages()?;
        if hp.free < need.max(1) {
            return Err(PreflightError::NoHugepages {
                free: hp.free,
                total: hp.total,
                need: need.max(1),
            });
        }
        let mounts = self.read("/proc/mounts")?;
        if !mounts
            .lines()
            .any(|l| l.split_whitespace().nth(2) == Some("hugetlbfs"))
        {
            return Err(PreflightError::NoHugetlbfs);
        }
        Ok(hp)
    }

    /// Root, or the capabilities DPDK/SPDK need, in the effective set.
    pub fn check_privileges(&self) -> Result<(), PreflightError> {
        let status = self.read("/proc/self/status")?;
        let cap_eff = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0);
        let missing: Vec<&str> = NEEDED_CAPS
            .iter()
            .filter(|(bit, _)| cap_eff & (1u64 << bit) == 0)
            .map(|(_, name)| *name)
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(PreflightError::Privileges {
                missing: missing.join(", "),
            })
        }
    }

    /// A PCI device (`0000:01:00.0`) is usable by a user-space driver: it exists, the IOMMU is
    /// on, vfio-pci is loaded and the device is bound to it.
    pub fn check_vfio(&self, addr: &str) -> Result<(), PreflightError> {
        let dev = format!("/sys/bus/pci/devices/{addr}");
        if !self.path(&dev).exists() {
            return Err(PreflightError::NoSuchPciDevice {
                addr: addr.to_owned(),
                path: dev,
            });
        }
        let groups = self.path("/sys/kernel/iommu_groups");
        let has_groups = fs::read_dir(&groups)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false);
        if !has_groups {
            return Err(PreflightError::NoIommu {
                addr: addr.to_owned(),
            });
        }
        if !self.path("/dev/vfio/vfio").exists() {
            return Err(PreflightError::NoVfio {
                addr: addr.to_owned(),
                why: "/dev/vfio/vfio is missing: the vfio module is not loaded".into(),
            });
        }
        if !self.path("/sys/bus/pci/drivers/vfio-pci").exists() {
            return Err(PreflightError::NoVfio {
                addr: addr.to_owned(),
                why: "the vfio-pci driver is not loaded".into(),
            });
        }
        let driver = fs::read_link(self.path(&format!("{dev}/driver")))
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "no driver".into());
        if driver != "vfio-pci" {
            return Err(PreflightError::NotBoundToVfio {
                addr: addr.to_owned(),
                driver,
            });
        }
        Ok(())
    }
}

/// A configured bdev name is among those SPDK reports.
pub fn check_bdev_exists(name: &str, present: &[String]) -> Result<(), PreflightError> {
    if present.iter().any(|p| p == name) {
        Ok(())
    } else {
        Err(PreflightError::NoSuchBdev {
            name: name.to_owned(),
            present: if present.is_empty() {
                "none".to_owned()
            } else {
                present.join(", ")
            },
        })
    }
}

/// True when `s` looks like a PCI address (`0000:01:00.0` or `01:00.0`), as opposed to a DPDK
/// vdev string (`net_af_packet0,iface=veth0`): only PCI devices need vfio.
pub fn is_pci_address(s: &str) -> bool {
    let parts: Vec<&str> = s.split([':', '.']).collect();
    let hex = |p: &str, n: usize| p.len() == n && p.chars().all(|c| c.is_ascii_hexdigit());
    match parts.as_slice() {
        [d, b, s, f] => hex(d, 4) && hex(b, 2) && hex(s, 2) && f.len() == 1 && hex(f, 1),
        [b, s, f] => hex(b, 2) && hex(s, 2) && hex(f, 1),
        _ => false,
    }
}

/// Runs the checks for an OSD configuration: hugepages always, privileges always, vfio for every
/// device that is a PCI address. Returns every failure, not just the first.
pub fn check_all(sys: &System, need_hugepages: u64, devices: &[&str]) -> Vec<PreflightError> {
    let mut errors = Vec::new();
    if let Err(e) = sys.check_privileges() {
        errors.push(e);
    }
    if let Err(e) = sys.check_hugepages(need_hugepages) {
        errors.push(e);
    }
    for dev in devices.iter().filter(|d| is_pci_address(d)) {
        if let Err(e) = sys.check_vfio(dev) {
            errors.push(e);
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use std::path::Path;

    fn write(root: &Path, p: &str, content: &str) {
        let path = root.join(p.trim_start_matches('/'));
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }

    fn meminfo(total: u64, free: u64) -> String {
        format!(
            "MemTotal:       24000000 kB\nHugePages_Total:    {total}\nHugePages_Free:     {free}\n\
             HugePages_Rsvd:        0\nHugepagesize:       2048 kB\n"
        )
    }

    const MOUNTS_WITH_HUGE: &str =
        "proc /proc proc rw 0 0\nhugetlbfs /dev/hugepages hugetlbfs rw,pagesize=2M 0 0\n";

    #[test]
    fn hugepages_ok_and_short() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "/proc/meminfo", &meminfo(512, 300));
        write(dir.path(), "/proc/mounts", MOUNTS_WITH_HUGE);
        let sys = System::root(dir.path());
        let hp = sys.check_hugepages(256).unwrap();
        assert_eq!((hp.total, hp.free, hp.page_kib), (512, 300, 2048));
        let err = sys.check_hugepages(400).unwrap_err();
        assert_eq!(
            err,
            PreflightError::NoHugepages {
                free: 300,
                total: 512,
                need: 400
            }
        );
        assert!(err.to_string().contains("hugepages.sh reserve 400"));
    }

    #[test]
    fn gigabyte_pages_count_as_gigabytes() {
        let dir = tempfile::tempdir().unwrap();
        let info = meminfo(16, 16).replace("2048 kB", "1048576 kB");
        write(dir.path(), "/proc/meminfo", &info);
        let hp = System::root(dir.path()).hugepages().unwrap();
        assert_eq!(hp.total_mib(), 16 << 10);
        write(dir.path(), "/proc/meminfo", &meminfo(512, 300));
        assert_eq!(
            System::root(dir.path()).hugepages().unwrap().total_mib(),
            1024
        );
    }

    #[test]
    fn hugepages_none_reserved() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "/proc/meminfo", &meminfo(0, 0));
        write(dir.path(), "/proc/mounts", MOUNTS_WITH_HUGE);
        let err = System::root(dir.path()).check_hugepages(0).unwrap_err();
        assert!(matches!(err, PreflightError::NoHugepages { free: 0, .. }));
    }

    #[test]
    fn hugetlbfs_not_mounted() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "/proc/meminfo", &meminfo(64, 64));
        write(dir.path(), "/proc/mounts", "proc /proc proc rw 0 0\n");
        let err = System::root(dir.path()).check_hugepages(8).unwrap_err();
        assert_eq!(err, PreflightError::NoHugetlbfs);
    }

    #[test]
    fn privileges_from_capeff() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "/proc/self/status",
            "Name:\tx\nCapEff:\t000001ffffffffff\n",
        );
        System::root(dir.path()).check_privileges().unwrap();
        // Only CAP_NET_RAW (bit 13).
        write(
            dir.path(),
            "/proc/self/status",
            "Name:\tx\nCapEff:\t0000000000002000\n",
        );
        let err = System::root(dir.path()).check_privileges().unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("CAP_IPC_LOCK") && msg.contains("CAP_SYS_ADMIN"),
            "{msg}"
        );
        assert!(!msg.contains("CAP_NET_RAW"), "{msg}");
    }

    #[test]
    fn vfio_checks_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let sys = System::root(root);
        let addr = "0000:01:00.0";
        assert!(matches!(
            sys.check_vfio(addr),
            Err(PreflightError::NoSuchPciDevice { .. })
        ));
        fs::create_dir_all(root.join("sys/bus/pci/devices").join(addr)).unwrap();
        fs::create_dir_all(root.join("sys/kernel/iommu_groups")).unwrap();
        assert!(matches!(
            sys.check_vfio(addr),
            Err(PreflightError::NoIommu { .. })
        ));
        fs::create_dir_all(root.join("sys/kernel/iommu_groups/7")).unwrap();
        let err = sys.check_vfio(addr).unwrap_err();
        assert!(
            err.to_string().contains("scripts/bind-vfio 0000:01:00.0"),
            "{err}"
        );
        write(root, "/dev/vfio/vfio", "");
        fs::create_dir_all(root.join("sys/bus/pci/drivers/vfio-pci")).unwrap();
        fs::create_dir_all(root.join("sys/bus/pci/drivers/nvme")).unwrap();
        let link = root.join("sys/bus/pci/devices").join(addr).join("driver");
        symlink(root.join("sys/bus/pci/drivers/nvme"), &link).unwrap();
        assert_eq!(
            sys.check_vfio(addr),
            Err(PreflightError::NotBoundToVfio {
                addr: addr.into(),
                driver: "nvme".into()
            })
        );
        fs::remove_file(&link).unwrap();
        symlink(root.join("sys/bus/pci/drivers/vfio-pci"), &link).unwrap();
        sys.check_vfio(addr).unwrap();
    }

    #[test]
    fn bdev_names() {
        let present = vec!["Malloc0".to_owned(), "Null0".to_owned()];
        check_bdev_exists("Malloc0", &present).unwrap();
        let err = check_bdev_exists("Nvme0n1", &present).unwrap_err();
        assert!(err.to_string().contains("Malloc0, Null0"), "{err}");
        assert!(check_bdev_exists("x", &[])
            .unwrap_err()
            .to_string()
            .contains("none"));
    }

    #[test]
    fn pci_addresses_vs_vdevs() {
        assert!(is_pci_address("0000:01:00.0"));
        assert!(is_pci_address("af:00.1"));
        assert!(!is_pci_address("net_af_packet0,iface=veth0"));
        assert!(!is_pci_address("0000:01:00"));
        assert!(!is_pci_address("zz:00.0"));
    }

    #[test]
    fn check_all_collects_every_failure() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "/proc/meminfo", &meminfo(0, 0));
        write(dir.path(), "/proc/mounts", "proc /proc proc rw 0 0\n");
        write(
            dir.path(),
            "/proc/self/status",
            "CapEff:\t0000000000000000\n",
        );
        let errs = check_all(
            &System::root(dir.path()),
            16,
            &["0000:02:00.0", "net_af_packet0,iface=v0"],
        );
        assert_eq!(errs.len(), 3, "{errs:?}");
    }

    #[test]
    fn this_machine_is_readable() {
        // The real files parse (values depend on the machine, the shape must not).
        let hp = System::default().hugepages().unwrap();
        assert!(hp.page_kib > 0);
    }
}
