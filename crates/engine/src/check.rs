//! `formicary check`: what this host offers and what formicary will enforce
//! here. It ends with a real sandbox run of `true`, the most honest test of
//! whether everything fits together.

use crate::config::EngineConfig;
use crate::result::Status;
use crate::sandbox::Engine;
use crate::spec::SandboxSpec;
use serde::Serialize;
use std::fmt::Write;

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Item {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct HostReport {
    /// A sandbox with the default limits runs here.
    pub ready: bool,
    pub rootless: bool,
    pub kernel: String,
    pub items: Vec<Item>,
    pub limits: Vec<Item>,
    /// Every cgroup hierarchy found, in detail.
    pub cgroup_report: Option<crate::cgroups::CgroupReport>,
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn item(name: &str, ok: bool, detail: impl Into<String>) -> Item {
    Item {
        name: name.to_string(),
        ok,
        detail: detail.into(),
    }
}

/// Looks at the host and runs one sandbox.
pub fn host_report(config: EngineConfig) -> HostReport {
    let kernel = kernel_release();
    let engine = match Engine::new(config) {
        Ok(e) => e,
        Err(e) => {
            return HostReport {
                ready: false,
                rootless: crate::sys::euid() != 0,
                kernel,
                items: vec![item("engine", false, e.to_string())],
                limits: Vec::new(),
                cgroup_report: None,
            }
        }
    };
    let facts = engine.facts();
    let mut items = Vec::new();
    let max_userns = std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    items.push(item(
        "user namespaces",
        max_userns != "0",
        format!("user.max_user_namespaces = {max_userns}"),
    ));
    let cgroup_report = crate::cgroups::HostCgroups::detect()
        .ok()
        .map(|h| h.report());
    let (cgroup_ok, cgroup_detail) = match &cgroup_report {
        Some(r) => describe_cgroups(r),
        None => (false, "cannot read /proc/self/mountinfo".to_string()),
    };
    items.push(item("cgroups", cgroup_ok, cgroup_detail));
    let fast_migration = std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| {
            m.lines()
                .any(|l| l.contains(" - cgroup") && l.contains("favordynmods"))
        })
        .unwrap_or(false);
    items.push(item(
        "cgroup moves",
        true,
        if fast_migration {
            "fast: a cgroup hierarchy is mounted with favordynmods"
        } else {
            "may wait for an RCU grace period (milliseconds) per run; `mount -o remount,favordynmods /sys/fs/cgroup` (or any cgroup mount) makes them fast"
        },
    ));
    items.push(item(
        "seccomp user notification",
        facts.user_notif,
        if facts.user_notif {
            "denied syscalls are recorded"
        } else {
            "not available: denied syscalls fail but are not recorded (kernel 5.0+ needed)"
        },
    ));
    items.push(item(
        "landlock",
        facts.landlock_abi.is_some(),
        match facts.landlock_abi {
            Some(abi) => format!("ABI {abi}"),
            None => "not available: the mount namespace alone confines writes".into(),
        },
    ));
    let defaults = &engine.config().network;
    items.push(item(
        "network",
        true,
        format!(
            "{}; --net allow=... goes through the filtering proxy at the sandbox's 127.0.0.1:{}{}",
            if defaults.enabled() {
                format!("the config allows {} by default", defaults.allow.join(","))
            } else {
                "loopback only by default".to_string()
            },
            crate::network::PROXY_PORT,
            match facts.landlock_abi {
                Some(abi) if abi >= 4 => ", the only TCP port a program may connect to (Landlock)",
                _ => " (no Landlock network rules here: a program may also connect to its own loopback's ports)",
            }
        ),
    ));
    items.push(item(
        "privilege",
        true,
        if facts.rootless {
            "rootless: the sandbox user is your own uid".to_string()
        } else {
            format!(
                "root: each sandbox gets its own host uid from {} ({} slots)",
                engine.config().uid_base,
                engine.config().uid_count
            )
        },
    ));

    let cg = facts.cgroups.is_some();
    let limits = vec![
        item("wall_time", true, "supervisor deadline"),
        item(
            "cpu_time",
            cg,
            if cg {
                "cgroup CPU accounting"
            } else {
                "per-process RLIMIT_CPU only: many processes together can pass the limit"
            },
        ),
        item(
            "memory",
            cg,
            if cg {
                "cgroup memory limit, swap 0"
            } else {
                "needs a cgroup"
            },
        ),
        item(
            "pids",
            cg,
            if cg {
                "cgroup pids limit"
            } else {
                "needs a cgroup"
            },
        ),
        item("disk", true, "size of the writable tmpfs"),
        item("output", true, "supervisor"),
        item("open_files", true, "RLIMIT_NOFILE"),
        item("file_size", true, "RLIMIT_FSIZE"),
    ];

    // The isolation layers are tried even where some limits cannot be
    // enforced: the limit lines above tell those apart.
    let mut smoke = SandboxSpec::new("true", Vec::new());
    smoke.allow_degraded = true;
    let result = engine.run(&smoke);
    let smoke_ok = result.status == Status::Ok;
    items.push(item(
        "sandbox run",
        smoke_ok,
        if smoke_ok {
            format!("`true` ran in a full sandbox in {} ms", result.wall_time_ms)
        } else {
            result
                .error
                .unwrap_or_else(|| format!("status {:?}", result.status))
        },
    ));
    HostReport {
        ready: smoke_ok && cg,
        rootless: facts.rootless,
        kernel,
        items,
        limits,
        cgroup_report,
    }
}

/// One line about the cgroups: the version used, where its hierarchies are,
/// and whether this process may create cgroups in them.
fn describe_cgroups(r: &crate::cgroups::CgroupReport) -> (bool, String) {
    let Some(version) = r.version else {
        return (
            false,
            r.unavailable_reason
                .clone()
                .unwrap_or_else(|| "no usable cgroup hierarchy".into()),
        );
    };
    let used: Vec<String> = r
        .hierarchies
        .iter()
        .filter(|h| h.used)
        .map(|h| format!("{} at {}", h.controllers.join(","), h.mount_point.display()))
        .collect();
    let swap = match r.swap_accounting {
        Some(true) => "swap accounted (limited to 0)",
        Some(false) => "no swap accounting (swappiness 0 instead)",
        None => "swap accounting unknown",
    };
    let create = if r.can_create {
        "this process may create cgroups"
    } else {
        "this process may NOT create cgroups there (run as root, or set [cgroup] parent to a tree it owns)"
    };
    (
        r.can_create,
        format!("{version}: {}; {swap}; {create}", used.join("; ")),
    )
}

impl HostReport {
    /// A human-readable rendering.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let mark = |ok| if ok { "ok  " } else { "MISS" };
        let _ = writeln!(s, "kernel {}", self.kernel);
        for i in &self.items {
            let _ = writeln!(s, "[{}] {}: {}", mark(i.ok), i.name, i.detail);
        }
        let _ = writeln!(s, "limits:");
        for i in &self.limits {
            let _ = writeln!(s, "[{}] {}: {}", mark(i.ok), i.name, i.detail);
        }
        let _ = writeln!(
            s,
            "{}",
            if self.ready {
                "ready: every limit and layer is enforced here"
            } else {
                "not ready: see the MISS lines; runs need --allow-degraded until they are fixed"
            }
        );
        s
    }
}
