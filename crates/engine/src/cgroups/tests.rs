//! Detection against fake mountinfo text, and both managers against fake
//! cgroupfs trees of plain files (as Firecracker's jailer tests do).

use super::fs::PlainFs;
use super::*;

const PURE_V2: &str = "\
22 28 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
25 23 0:22 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

/// This development machine: v1 hierarchies, cpu and cpuacct apart, and an
/// almost empty cgroup2 at .../unified.
const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

const HYBRID_SELF: &str =
    "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/9a68\n2:cpuacct:/\n1:cpu:/\n0::/\n";

/// A systemd host of a few years ago: cpu and cpuacct co-mounted.
const COMOUNTED: &str = "\
25 24 0:23 / /sys/fs/cgroup rw - tmpfs tmpfs ro,mode=755
26 25 0:24 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate
27 25 0:25 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
30 25 0:28 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
31 25 0:29 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
32 25 0:30 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
";

const NO_CGROUPS: &str = "\
22 28 0:21 / /proc rw,nosuid - proc proc rw
23 28 0:5 / /dev rw - devtmpfs udev rw
";

fn fake_root() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// Makes the mount point directories of `mountinfo` under `root`, and the
/// cgroup2 mount's `cgroup.controllers`.
fn populate(root: &Path, mountinfo: &str, v2_controllers: &str) {
    for m in detect::parse_mountinfo(mountinfo).expect("fixture parses") {
        let dir = root.join(m.mount_point.trim_start_matches('/'));
        std::fs::create_dir_all(&dir).expect("mkdir");
        if m.v2 {
            std::fs::write(dir.join("cgroup.controllers"), v2_controllers).expect("write");
        }
    }
}

fn fake_host(
    root: &Path,
    mountinfo: &str,
    own: &str,
    v2_controllers: &str,
) -> (HostCgroups, Arc<PlainFs>) {
    populate(root, mountinfo, v2_controllers);
    let fs = Arc::new(PlainFs::default());
    let host = HostCgroups::detect_at(mountinfo, own, root)
        .expect("detects")
        .with_fs(fs.clone());
    (host, fs)
}

fn read(path: PathBuf) -> String {
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

const LIMITS: CgroupLimits = CgroupLimits {
    memory_bytes: 32 << 20,
    pids: 8,
};

// ---- detection ----

#[test]
fn pure_v2_host_with_memory_and_pids_uses_v2() {
    let root = fake_root();
    let (host, _) = fake_host(
        root.path(),
        PURE_V2,
        "0::/user.slice/x.scope\n",
        "cpuset cpu io memory hugetlb pids rdma misc\n",
    );
    assert_eq!(host.version(), Some(CgroupVersion::V2));
    let report = host.report();
    assert_eq!(report.hierarchies.len(), 1);
    assert!(report.hierarchies[0].used);
    assert_eq!(
        report.hierarchies[0].own_cgroup.as_deref(),
        Some("/user.slice/x.scope")
    );
    assert!(report.hierarchies[0]
        .controllers
        .contains(&"memory".to_string()));
}

#[test]
fn v2_without_the_memory_controller_is_not_usable() {
    let root = fake_root();
    let (host, _) = fake_host(root.path(), PURE_V2, "0::/\n", "cpu io pids\n");
    assert_eq!(host.version(), None);
    let reason = host.report().unavailable_reason.expect("a reason");
    assert!(reason.contains("[cpu io pids]"), "{reason}");
}

#[test]
fn hybrid_host_like_this_machine_uses_v1() {
    let root = fake_root();
    let (host, _) = fake_host(root.path(), HYBRID, HYBRID_SELF, "hugetlb\n");
    assert_eq!(host.version(), Some(CgroupVersion::V1));
    let layout = host.v1_layout().expect("layout");
    let r = root.path().join("sys/fs/cgroup");
    assert_eq!(layout.memory, r.join("memory"));
    assert_eq!(layout.pids, r.join("pids"));
    assert_eq!(layout.cpuacct, r.join("cpuacct"));
    let report = host.report();
    let memory = report
        .hierarchies
        .iter()
        .find(|h| h.controllers == ["memory"])
        .expect("memory listed");
    assert!(memory.used);
    assert_eq!(memory.own_cgroup.as_deref(), Some("/process_api/9a68"));
    // cpu is mounted but not used; the systemd named hierarchy is not listed.
    assert!(
        !report
            .hierarchies
            .iter()
            .find(|h| h.controllers == ["cpu"])
            .expect("cpu")
            .used
    );
    assert_eq!(report.hierarchies.len(), 7);
    // No memsw file in the fake memory root: swap not accounted.
    assert_eq!(report.swap_accounting, Some(false));
}

#[test]
fn comounted_cpu_cpuacct_is_found_by_controller_not_by_name() {
    let root = fake_root();
    let (host, _) = fake_host(root.path(), COMOUNTED, "", "\n");
    assert_eq!(host.version(), Some(CgroupVersion::V1));
    let layout = host.v1_layout().expect("layout");
    assert_eq!(
        layout.cpuacct,
        root.path().join("sys/fs/cgroup/cpu,cpuacct")
    );
    assert_eq!(layout.distinct_mounts().len(), 3);
}

#[test]
fn host_without_cgroups_has_no_version_and_create_says_why() {
    let root = fake_root();
    let (host, _) = fake_host(root.path(), NO_CGROUPS, "", "");
    assert_eq!(host.version(), None);
    let err = host
        .create("formicary", "sb1", &LIMITS)
        .expect_err("no cgroups");
    let text = err.to_string();
    assert!(text.contains("no cgroup2 mount"), "{text}");
    assert!(text.contains("memory pids cpuacct"), "{text}");
    assert!(!host.report().can_create);
    assert!(!host.can_create());
}

#[test]
fn can_create_agrees_with_the_report() {
    for (mountinfo, own, controllers) in [
        (PURE_V2, "0::/user.slice/x.scope\n", "memory pids\n"),
        (HYBRID, HYBRID_SELF, "hugetlb\n"),
        (COMOUNTED, "", "\n"),
        (NO_CGROUPS, "", ""),
    ] {
        let root = fake_root();
        let (host, _) = fake_host(root.path(), mountinfo, own, controllers);
        assert_eq!(host.can_create(), host.report().can_create, "{mountinfo}");
    }
}

#[test]
fn version_prints_and_serializes_as_v1_v2() {
    assert_eq!(CgroupVersion::V1.to_string(), "v1");
    assert_eq!(CgroupVersion::V2.to_string(), "v2");
    assert_eq!(
        serde_json::to_string(&CgroupVersion::V2).expect("json"),
        "\"v2\""
    );
}

// ---- v1 against a fake tree ----

#[test]
fn v1_create_writes_limits_with_memsw_when_swap_is_accounted() {
    let root = fake_root();
    let mem = root.path().join("sys/fs/cgroup/memory");
    std::fs::create_dir_all(&mem).expect("mkdir");
    std::fs::write(
        mem.join("memory.memsw.limit_in_bytes"),
        "9223372036854771712\n",
    )
    .expect("write");
    let (host, _) = fake_host(root.path(), HYBRID, HYBRID_SELF, "hugetlb\n");
    assert_eq!(host.report().swap_accounting, Some(true));

    let cg = host.create("formicary", "sb1", &LIMITS).expect("create");
    assert_eq!(cg.version(), CgroupVersion::V1);
    assert!(cg.procs_file_fd().is_none());
    let sb = mem.join("formicary/sb1");
    assert_eq!(read(sb.join("memory.limit_in_bytes")), "33554432");
    assert_eq!(read(sb.join("memory.memsw.limit_in_bytes")), "33554432");
    assert_eq!(read(sb.join("memory.oom_control")), "0");
    assert!(!sb.join("memory.swappiness").exists());
    assert_eq!(read(mem.join("formicary/memory.use_hierarchy")), "1");
    let pids = root.path().join("sys/fs/cgroup/pids/formicary/sb1");
    assert_eq!(read(pids.join("pids.max")), "8");
    assert!(root
        .path()
        .join("sys/fs/cgroup/cpuacct/formicary/sb1")
        .is_dir());
    // The cpu hierarchy is not used.
    assert!(!root.path().join("sys/fs/cgroup/cpu/formicary").exists());
}

#[test]
fn v1_without_swap_accounting_sets_swappiness_zero() {
    let root = fake_root();
    let (host, _) = fake_host(root.path(), HYBRID, HYBRID_SELF, "hugetlb\n");
    let _cg = host.create("formicary", "sb1", &LIMITS).expect("create");
    let sb = root.path().join("sys/fs/cgroup/memory/formicary/sb1");
    assert_eq!(read(sb.join("memory.swappiness")), "0");
    assert!(!sb.join("memory.memsw.limit_in_bytes").exists());
}

#[test]
fn v1_update_writes_only_the_limits_that_change_in_the_right_order() {
    let root = fake_root();
    let mem = root.path().join("sys/fs/cgroup/memory");
    std::fs::create_dir_all(&mem).expect("mkdir");
    std::fs::write(mem.join("memory.memsw.limit_in_bytes"), "0\n").expect("write");
    let (host, _) = fake_host(root.path(), HYBRID, HYBRID_SELF, "hugetlb\n");
    let cg = host.create("formicary", "sb1", &LIMITS).expect("create");
    let sb = mem.join("formicary/sb1");
    let pids = root
        .path()
        .join("sys/fs/cgroup/pids/formicary/sb1/pids.max");
    let mark = |path: &Path| std::fs::write(path, "untouched").expect("mark");
    for f in [
        "memory.limit_in_bytes",
        "memory.memsw.limit_in_bytes",
        "memory.oom_control",
    ] {
        mark(&sb.join(f));
    }
    mark(&pids);
    // The same limits: nothing is written.
    cg.update_limits(&LIMITS).expect("update");
    assert_eq!(read(sb.join("memory.limit_in_bytes")), "untouched");
    assert_eq!(read(pids.clone()), "untouched");
    // Only pids change: only pids.max is written.
    let more_pids = CgroupLimits {
        pids: LIMITS.pids + 1,
        ..LIMITS
    };
    cg.update_limits(&more_pids).expect("update");
    assert_eq!(read(pids.clone()), (LIMITS.pids + 1).to_string());
    assert_eq!(read(sb.join("memory.limit_in_bytes")), "untouched");
    assert_eq!(read(sb.join("memory.memsw.limit_in_bytes")), "untouched");
    assert_eq!(read(sb.join("memory.oom_control")), "untouched");
    // Memory changes: both memory files, and nothing else.
    let more_memory = CgroupLimits {
        memory_bytes: LIMITS.memory_bytes * 2,
        ..more_pids
    };
    mark(&pids);
    cg.update_limits(&more_memory).expect("update");
    let bytes = (LIMITS.memory_bytes * 2).to_string();
    assert_eq!(read(sb.join("memory.limit_in_bytes")), bytes);
    assert_eq!(read(sb.join("memory.memsw.limit_in_bytes")), bytes);
    assert_eq!(read(pids), "untouched");
}

#[test]
fn v1_add_process_writes_the_pid_into_every_hierarchy() {
    let root = fake_root();
    let (host, _) = fake_host(root.path(), COMOUNTED, "", "\n");
    let cg = host.create("formicary", "sb1", &LIMITS).expect("create");
    cg.add_process(4242).expect("add");
    for h in ["memory", "pids", "cpu,cpuacct"] {
        let p = root
            .path()
            .join("sys/fs/cgroup")
            .join(h)
            .join("formicary/sb1/cgroup.procs");
        assert_eq!(read(p), "4242");
    }
}

#[test]
fn v1_usage_parses_real_file_contents() {
    let root = fake_root();
    let (host, _) = fake_host(root.path(), HYBRID, HYBRID_SELF, "hugetlb\n");
    let cg = host.create("formicary", "sb1", &LIMITS).expect("create");
    let r = root.path().join("sys/fs/cgroup");
    std::fs::write(
        r.join("cpuacct/formicary/sb1/cpuacct.usage"),
        "1234567890\n",
    )
    .expect("w");
    std::fs::write(
        r.join("memory/formicary/sb1/memory.max_usage_in_bytes"),
        "33554432\n",
    )
    .expect("w");
    std::fs::write(
        r.join("memory/formicary/sb1/memory.oom_control"),
        "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
    )
    .expect("w");
    std::fs::write(r.join("pids/formicary/sb1/pids.events"), "max 17\n").expect("w");
    assert_eq!(
        cg.usage().expect("usage"),
        CgroupUsage {
            cpu_time_ns: 1_234_567_890,
            memory_peak_bytes: 33_554_432,
            oom_kills: 2,
            pids_limit_hits: 17,
        }
    );
    // Files stay open and are re-read from offset 0.
    std::fs::write(
        r.join("cpuacct/formicary/sb1/cpuacct.usage"),
        "2000000000\n",
    )
    .expect("w");
    assert_eq!(cg.cpu_time_ns().expect("cpu"), 2_000_000_000);
}

#[test]
fn v1_usage_refuses_garbage_and_names_the_file() {
    let root = fake_root();
    let (host, _) = fake_host(root.path(), HYBRID, HYBRID_SELF, "hugetlb\n");
    let cg = host.create("formicary", "sb1", &LIMITS).expect("create");
    let f = root
        .path()
        .join("sys/fs/cgroup/cpuacct/formicary/sb1/cpuacct.usage");
    std::fs::write(&f, "lots\n").expect("w");
    let err = cg.cpu_time_ns().expect_err("garbage");
    assert!(err.to_string().contains(&f.display().to_string()), "{err}");
}

#[test]
fn v1_kill_all_kills_listed_pids_and_destroy_removes_every_dir() {
    let root = fake_root();
    let (host, fs) = fake_host(root.path(), HYBRID, HYBRID_SELF, "hugetlb\n");
    let cg = host.create("formicary", "sb1", &LIMITS).expect("create");
    let r = root.path().join("sys/fs/cgroup");
    std::fs::write(r.join("memory/formicary/sb1/cgroup.procs"), "10\n11\n").expect("w");
    cg.kill_all().expect("kill");
    assert_eq!(*fs.killed.lock().expect("lock"), vec![10, 11]);
    cg.destroy().expect("destroy");
    for h in ["memory", "pids", "cpuacct"] {
        assert!(!r.join(h).join("formicary/sb1").exists(), "{h} left behind");
        assert!(r.join(h).join("formicary").is_dir(), "{h} parent kept");
    }
    host.remove_parent("formicary").expect("remove parent");
    assert!(!r.join("memory/formicary").exists());
}

#[test]
fn creating_the_same_sandbox_twice_is_refused_and_the_first_is_kept() {
    let root = fake_root();
    let (host, _) = fake_host(root.path(), HYBRID, HYBRID_SELF, "hugetlb\n");
    let _cg = host.create("formicary", "sb1", &LIMITS).expect("create");
    let err = host
        .create("formicary", "sb1", &LIMITS)
        .expect_err("exists");
    assert!(matches!(err, CgroupError::AlreadyExists { .. }), "{err}");
    assert!(root
        .path()
        .join("sys/fs/cgroup/memory/formicary/sb1/memory.limit_in_bytes")
        .exists());
}

#[test]
fn bad_names_and_zero_limits_are_refused_before_touching_anything() {
    let root = fake_root();
    let (host, _) = fake_host(root.path(), HYBRID, HYBRID_SELF, "hugetlb\n");
    for (parent, name) in [
        ("formicary", ".."),
        ("formicary", "a/b"),
        ("../etc", "x"),
        ("/abs", "x"),
        ("", "x"),
        ("formicary", ""),
    ] {
        let err = host.create(parent, name, &LIMITS).expect_err("bad name");
        assert!(
            matches!(err, CgroupError::InvalidName { .. }),
            "{parent} {name}: {err}"
        );
    }
    let zero = CgroupLimits {
        memory_bytes: 0,
        pids: 8,
    };
    assert!(matches!(
        host.create("formicary", "x", &zero),
        Err(CgroupError::InvalidLimit { what: "memory" })
    ));
    assert!(!root.path().join("sys/fs/cgroup/memory/formicary").exists());
    // Nested parents are fine.
    host.create("formicary/judge", "x", &LIMITS)
        .expect("nested parent");
}

#[test]
fn cleanup_stale_removes_only_stale_children_counting_names() {
    let root = fake_root();
    let (host, fs) = fake_host(root.path(), HYBRID, HYBRID_SELF, "hugetlb\n");
    for name in ["old-1", "old-2", "live-1"] {
        let _ = host.create("formicary", name, &LIMITS).expect("create");
    }
    let r = root.path().join("sys/fs/cgroup");
    std::fs::write(r.join("pids/formicary/old-1/cgroup.procs"), "77\n").expect("w");
    let n = host
        .cleanup_stale("formicary", &|name| name.starts_with("old-"))
        .expect("cleanup");
    assert_eq!(n, 2);
    assert_eq!(*fs.killed.lock().expect("lock"), vec![77]);
    for h in ["memory", "pids", "cpuacct"] {
        assert!(!r.join(h).join("formicary/old-1").exists());
        assert!(r.join(h).join("formicary/live-1").is_dir());
    }
    assert_eq!(
        host.cleanup_stale("nothing-here", &|_| true)
            .expect("missing parent"),
        0
    );
}

// ---- v2 against a fake tree ----

const V2_ALL: &str = "cpuset cpu io memory hugetlb pids rdma misc\n";

#[test]
fn parents_are_set_up_once_and_again_only_when_they_vanish() {
    let root = fake_root();
    let (host, _) = fake_host(root.path(), PURE_V2, "0::/init.scope\n", V2_ALL);
    let r = root.path().join("sys/fs/cgroup");
    let control = r.join("formicary/cgroup.subtree_control");
    let first = host.create("formicary", "sb1", &LIMITS).expect("first");
    assert_eq!(read(control.clone()), "+memory +pids +cpu");

    // The parent is known now: the next sandbox makes only its own
    // directory (a stand-in for the kernel's file shows nothing rewritten).
    std::fs::write(&control, "untouched").expect("write");
    let second = host.create("formicary", "sb2", &LIMITS).expect("second");
    assert_eq!(read(control.clone()), "untouched");
    assert_eq!(read(r.join("formicary/sb2/pids.max")), "8");

    // A parent removed behind this process's back is made again, with its
    // controllers, by the first creation that misses it.
    first.destroy().expect("destroy");
    second.destroy().expect("destroy");
    std::fs::remove_dir_all(r.join("formicary")).expect("remove parent");
    let third = host.create("formicary", "sb3", &LIMITS).expect("third");
    assert_eq!(read(control), "+memory +pids +cpu");
    assert_eq!(read(r.join("formicary/sb3/memory.max")), "33554432");
    third.destroy().expect("destroy");

    // The same on v1, in every hierarchy.
    let root = fake_root();
    let (host, _) = fake_host(root.path(), HYBRID, HYBRID_SELF, "hugetlb\n");
    let r = root.path().join("sys/fs/cgroup");
    host.create("formicary", "sb1", &LIMITS)
        .expect("first")
        .destroy()
        .expect("destroy");
    std::fs::remove_dir_all(r.join("pids/formicary")).expect("remove one parent");
    let again = host.create("formicary", "sb2", &LIMITS).expect("again");
    assert_eq!(read(r.join("pids/formicary/sb2/pids.max")), "8");
    assert!(r.join("memory/formicary/sb2").is_dir());
    again.destroy().expect("destroy");
    assert!(
        !r.join("memory/formicary/sb2").exists(),
        "nothing left of the retry"
    );
}

#[test]
fn v2_create_enables_controllers_down_the_parents_and_writes_limits() {
    let root = fake_root();
    let (host, _) = fake_host(root.path(), PURE_V2, "0::/init.scope\n", V2_ALL);
    let cg = host
        .create("formicary/judge", "sb1", &LIMITS)
        .expect("create");
    assert_eq!(cg.version(), CgroupVersion::V2);
    assert!(cg.procs_file_fd().is_some());
    let r = root.path().join("sys/fs/cgroup");
    for dir in [r.clone(), r.join("formicary"), r.join("formicary/judge")] {
        assert_eq!(
            read(dir.join("cgroup.subtree_control")),
            "+memory +pids +cpu",
            "{}",
            dir.display()
        );
    }
    let sb = r.join("formicary/judge/sb1");
    assert!(
        !sb.join("cgroup.subtree_control").exists(),
        "the leaf holds processes: no controllers enabled in it"
    );
    assert_eq!(read(sb.join("memory.max")), "33554432");
    assert_eq!(read(sb.join("memory.swap.max")), "0");
    assert_eq!(read(sb.join("memory.oom.group")), "1");
    assert_eq!(read(sb.join("pids.max")), "8");
    cg.add_process(99).expect("add");
    assert_eq!(read(sb.join("cgroup.procs")), "99");
}

#[test]
fn v2_update_writes_only_the_limits_that_change() {
    let root = fake_root();
    let (host, _) = fake_host(root.path(), PURE_V2, "0::/init.scope\n", V2_ALL);
    let cg = host.create("formicary", "sb1", &LIMITS).expect("create");
    let sb = root.path().join("sys/fs/cgroup/formicary/sb1");
    for f in [
        "memory.max",
        "memory.swap.max",
        "memory.oom.group",
        "pids.max",
    ] {
        std::fs::write(sb.join(f), "untouched").expect("mark");
    }
    cg.update_limits(&LIMITS).expect("update");
    assert_eq!(read(sb.join("memory.max")), "untouched");
    assert_eq!(read(sb.join("pids.max")), "untouched");
    let changed = CgroupLimits {
        memory_bytes: LIMITS.memory_bytes * 2,
        ..LIMITS
    };
    cg.update_limits(&changed).expect("update");
    assert_eq!(
        read(sb.join("memory.max")),
        (LIMITS.memory_bytes * 2).to_string()
    );
    assert_eq!(read(sb.join("pids.max")), "untouched");
    assert_eq!(read(sb.join("memory.swap.max")), "untouched");
    assert_eq!(read(sb.join("memory.oom.group")), "untouched");
}

#[test]
fn v2_without_cpu_controller_enables_only_memory_and_pids() {
    let root = fake_root();
    let (host, _) = fake_host(root.path(), PURE_V2, "", "memory pids\n");
    let _cg = host.create("formicary", "sb1", &LIMITS).expect("create");
    let r = root.path().join("sys/fs/cgroup");
    assert_eq!(read(r.join("cgroup.subtree_control")), "+memory +pids");
}

#[test]
fn v2_usage_parses_real_file_contents() {
    let root = fake_root();
    let (host, _) = fake_host(root.path(), PURE_V2, "", V2_ALL);
    let cg = host.create("formicary", "sb1", &LIMITS).expect("create");
    let sb = root.path().join("sys/fs/cgroup/formicary/sb1");
    std::fs::write(
        sb.join("cpu.stat"),
        "usage_usec 250000\nuser_usec 200000\nsystem_usec 50000\ncore_sched.force_idle_usec 0\n\
         nr_periods 0\nnr_throttled 0\nthrottled_usec 0\nnr_bursts 0\nburst_usec 0\n",
    )
    .expect("w");
    std::fs::write(sb.join("memory.peak"), "33550336\n").expect("w");
    std::fs::write(sb.join("memory.current"), "4096\n").expect("w");
    std::fs::write(
        sb.join("memory.events"),
        "low 0\nhigh 0\nmax 41\noom 1\noom_kill 3\noom_group_kill 1\n",
    )
    .expect("w");
    std::fs::write(sb.join("pids.events"), "max 5\n").expect("w");
    assert_eq!(
        cg.usage().expect("usage"),
        CgroupUsage {
            cpu_time_ns: 250_000_000,
            memory_peak_bytes: 33_550_336,
            oom_kills: 3,
            pids_limit_hits: 5,
        }
    );
}

#[test]
fn v2_peak_falls_back_to_memory_current_before_linux_5_19() {
    let root = fake_root();
    let (host, _) = fake_host(root.path(), PURE_V2, "", V2_ALL);
    let cg = host.create("formicary", "sb1", &LIMITS).expect("create");
    let sb = root.path().join("sys/fs/cgroup/formicary/sb1");
    std::fs::write(sb.join("cpu.stat"), "usage_usec 1\n").expect("w");
    std::fs::write(sb.join("memory.current"), "8192\n").expect("w");
    // Older kernels lack oom_kill lines and pids.events "max" stays 0.
    std::fs::write(sb.join("memory.events"), "low 0\nhigh 0\nmax 0\noom 0\n").expect("w");
    std::fs::write(sb.join("pids.events"), "max 0\n").expect("w");
    let u = cg.usage().expect("usage");
    assert_eq!(u.memory_peak_bytes, 8192);
    assert_eq!(u.oom_kills, 0);
    assert_eq!(u.cpu_time_ns, 1000);
}

#[test]
fn v2_kill_all_writes_cgroup_kill_and_destroy_removes_the_dir() {
    let root = fake_root();
    let (host, fs) = fake_host(root.path(), PURE_V2, "", V2_ALL);
    let cg = host.create("formicary", "sb1", &LIMITS).expect("create");
    let sb = root.path().join("sys/fs/cgroup/formicary/sb1");
    cg.kill_all().expect("kill");
    assert_eq!(read(sb.join("cgroup.kill")), "1");
    assert!(fs.killed.lock().expect("lock").is_empty());
    cg.destroy().expect("destroy");
    assert!(!sb.exists());
    assert!(root.path().join("sys/fs/cgroup/formicary").is_dir());
}

#[test]
fn v2_cleanup_stale_removes_leftovers() {
    let root = fake_root();
    let (host, _) = fake_host(root.path(), PURE_V2, "", V2_ALL);
    let _a = host.create("formicary", "old", &LIMITS).expect("create");
    let _b = host.create("formicary", "new", &LIMITS).expect("create");
    assert_eq!(
        host.cleanup_stale("formicary", &|n| n == "old")
            .expect("cleanup"),
        1
    );
    let r = root.path().join("sys/fs/cgroup/formicary");
    assert!(!r.join("old").exists());
    assert!(r.join("new").is_dir());
}

#[test]
fn parse_key_reads_flat_keyed_files() {
    assert_eq!(parse_key("a 1\nmax 7\n", "max"), Ok(7));
    assert_eq!(parse_key("a 1\n", "max"), Ok(0));
    assert!(parse_key("max x\n", "max").is_err());
    // `max` must match the whole key, not a prefix of `max_usage`.
    assert_eq!(parse_key("max_usage 9\nmax 2\n", "max"), Ok(2));
}

#[test]
fn destroy_of_a_busy_cgroup_kills_then_retries() {
    let root = fake_root();
    let (host, fs) = fake_host(root.path(), HYBRID, HYBRID_SELF, "hugetlb\n");
    let cg = host.create("formicary", "sb1", &LIMITS).expect("create");
    let dir = root.path().join("sys/fs/cgroup/pids/formicary/sb1");
    std::fs::write(dir.join("cgroup.procs"), "5\n").expect("w");
    cg.destroy().expect("destroy");
    assert_eq!(*fs.killed.lock().expect("lock"), vec![5]);
    assert!(!dir.exists());
}

// ---- files are reached through the directories' descriptors ----

#[test]
fn v1_and_v2_write_through_the_directory_they_made_not_its_path() {
    // A created cgroup opens its files relative to the directory it made
    // (one name looked up, not the whole path walked through cgroupfs
    // again). Moving the directory shows it: the writes follow it.
    let root = fake_root();
    let (host, _) = fake_host(root.path(), HYBRID, HYBRID_SELF, "hugetlb\n");
    let cg = host.create("formicary", "sb1", &LIMITS).expect("create");
    let memory = root.path().join("sys/fs/cgroup/memory/formicary");
    let pids = root.path().join("sys/fs/cgroup/pids/formicary");
    std::fs::rename(memory.join("sb1"), memory.join("moved")).expect("move");
    std::fs::rename(pids.join("sb1"), pids.join("moved")).expect("move");
    let more = CgroupLimits {
        memory_bytes: LIMITS.memory_bytes * 2,
        pids: LIMITS.pids + 1,
    };
    cg.update_limits(&more).expect("update");
    cg.add_process(77).expect("add");
    assert_eq!(
        read(memory.join("moved/memory.limit_in_bytes")),
        (LIMITS.memory_bytes * 2).to_string()
    );
    assert_eq!(
        read(pids.join("moved/pids.max")),
        (LIMITS.pids + 1).to_string()
    );
    assert_eq!(read(pids.join("moved/cgroup.procs")), "77");
    assert!(!memory.join("sb1").exists());

    let root = fake_root();
    let (host, _) = fake_host(root.path(), PURE_V2, "0::/init.scope\n", V2_ALL);
    let cg = host.create("formicary", "sb1", &LIMITS).expect("create");
    let parent = root.path().join("sys/fs/cgroup/formicary");
    std::fs::rename(parent.join("sb1"), parent.join("moved")).expect("move");
    cg.update_limits(&more).expect("update");
    cg.add_process(78).expect("add");
    assert_eq!(
        read(parent.join("moved/memory.max")),
        (LIMITS.memory_bytes * 2).to_string()
    );
    assert_eq!(read(parent.join("moved/cgroup.procs")), "78");
    assert!(!parent.join("sb1").exists());
}

#[test]
fn on_this_host_own_cgroups_are_read_only_when_v2_or_a_report_needs_them() {
    let Ok(host) = HostCgroups::detect() else {
        eprintln!("SKIP: no cgroup mounts readable here");
        return;
    };
    // v1 decides nothing by this process's own cgroups: not read yet.
    // v2 needs them for its swap check: read during detection.
    match host.version() {
        Some(CgroupVersion::V1) => assert!(host.own.get().is_none()),
        Some(CgroupVersion::V2) => assert!(host.own.get().is_some()),
        None => {}
    }
    let own = detect::parse_proc_self_cgroup(
        &std::fs::read_to_string("/proc/self/cgroup").expect("read /proc/self/cgroup"),
    );
    let report = host.report();
    assert!(host.own.get().is_some(), "the report reads them");
    for h in &report.hierarchies {
        let expected = own
            .iter()
            .find(|o| match h.version {
                CgroupVersion::V2 => o.controllers.is_empty(),
                CgroupVersion::V1 => !o.controllers.is_empty() && o.controllers == h.controllers,
            })
            .map(|o| o.path.clone());
        assert_eq!(h.own_cgroup, expected, "{}", h.mount_point.display());
    }
}
