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
    let cgroup_detail = match &facts.cgroups {
        Some(host) => serde_json::to_string(&host.report()).unwrap_or_default(),
        None => "no cgroup v2 tree with memory and pids, and no v1 memory/pids/cpuacct hierarchies usable by this process".into(),
    };
    items.push(item("cgroups", facts.cgroups.is_some(), cgroup_detail));
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
            true,
            if cg {
                "cgroup CPU accounting"
            } else {
                "per-process RLIMIT_CPU only"
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

    let result = engine.run(&SandboxSpec::new("true", Vec::new()));
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
    }
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
