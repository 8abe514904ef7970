//! Reading what the host offers: cgroup mounts from `/proc/self/mountinfo`
//! and this process's own cgroups from `/proc/self/cgroup`.
//!
//! Parsing is pure: these functions only turn text into values. Which
//! version to use is decided in `mod.rs`, after the cgroup2 mount's
//! `cgroup.controllers` has been read.

/// One cgroup mount found in mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CgroupMount {
    /// Where it is mounted, unescaped, as mountinfo gives it (not yet
    /// prefixed with a test root).
    pub mount_point: String,
    /// True for `cgroup2`, false for a v1 `cgroup` hierarchy.
    pub v2: bool,
    /// v1: the controllers of the hierarchy (from the super options, e.g.
    /// `cpu`, `cpuacct`); named hierarchies (`name=systemd`) have none.
    /// v2: empty here; read from `cgroup.controllers` later.
    pub controllers: Vec<String>,
}

pub(crate) use crate::mountinfo::BadLine;

/// Finds every cgroup and cgroup2 mount.
pub(crate) fn parse_mountinfo(text: &str) -> Result<Vec<CgroupMount>, BadLine> {
    let mut mounts: Vec<CgroupMount> = Vec::new();
    for entry in crate::mountinfo::parse(text)? {
        let v2 = match entry.fstype.as_str() {
            "cgroup2" => true,
            "cgroup" => false,
            _ => continue,
        };
        let controllers = if v2 {
            Vec::new()
        } else {
            entry
                .super_options
                .split(',')
                .filter(|o| is_v1_controller(o))
                .map(str::to_string)
                .collect()
        };
        // The same hierarchy can be mounted twice (bind mounts): keep the
        // first, which is the one mountinfo lists as mounted earliest.
        if mounts
            .iter()
            .any(|m| m.v2 == v2 && m.mount_point == entry.mount_point)
        {
            continue;
        }
        mounts.push(CgroupMount {
            mount_point: entry.mount_point,
            v2,
            controllers,
        });
    }
    Ok(mounts)
}

/// Super options of a v1 cgroup mount that are not controller names.
fn is_v1_controller(option: &str) -> bool {
    !matches!(
        option,
        "rw" | "ro" | "noprefix" | "clone_children" | "xattr" | "cpuset_v2_mode" | "favordynmods"
    ) && !option.contains('=')
        && !option.is_empty()
}

/// One line of `/proc/self/cgroup`: `id:controllers:path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OwnCgroup {
    /// v1: the hierarchy's controllers (`memory`, `cpu,cpuacct`,
    /// `name=systemd`); v2: empty.
    pub controllers: Vec<String>,
    /// The path relative to the hierarchy's root, e.g. `/process_api/9a68`.
    pub path: String,
}

/// Parses `/proc/self/cgroup`. Malformed lines are skipped: the file is
/// informative only (it feeds the report).
pub(crate) fn parse_proc_self_cgroup(text: &str) -> Vec<OwnCgroup> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let _id = parts.next()?;
            let controllers = parts.next()?;
            let path = parts.next()?;
            Some(OwnCgroup {
                controllers: controllers
                    .split(',')
                    .filter(|c| !c.is_empty())
                    .map(str::to_string)
                    .collect(),
                path: path.to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_non_cgroup_mounts_and_named_hierarchies_have_no_controllers() {
        let text = "22 1 0:21 / /proc rw - proc proc rw\n\
                    40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd\n";
        let m = parse_mountinfo(text).expect("parses");
        assert_eq!(m.len(), 1);
        assert!(m[0].controllers.is_empty());
    }

    #[test]
    fn refuses_a_line_without_separator() {
        assert!(parse_mountinfo("garbage line\n").is_err());
    }

    #[test]
    fn parses_proc_self_cgroup_of_a_hybrid_host() {
        let own = parse_proc_self_cgroup("4:memory:/process_api/9a\n1:cpu,cpuacct:/\n0::/\n");
        assert_eq!(own.len(), 3);
        assert_eq!(own[0].controllers, vec!["memory"]);
        assert_eq!(own[0].path, "/process_api/9a");
        assert_eq!(own[1].controllers, vec!["cpu", "cpuacct"]);
        assert!(own[2].controllers.is_empty());
    }
}
