//! Reading `/proc/self/mountinfo`: one entry per mount, as proc(5) lays
//! the lines out: `id parent maj:min root mount-point options
//! [optional...] - fstype source super-options`. Pure parsing; what to do
//! with the mounts is the caller's (`cgroups` finds its hierarchies, the
//! spawner sheds the kernel's interface filesystems).

/// One mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MountEntry {
    /// Where it is mounted, unescaped.
    pub mount_point: String,
    pub fstype: String,
    /// The filesystem's own options (for cgroup v1, its controllers).
    pub super_options: String,
}

/// A line that is not a mountinfo line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BadLine(pub String);

/// Every mount of `text`, in its order (parents before their children).
pub(crate) fn parse(text: &str) -> Result<Vec<MountEntry>, BadLine> {
    let mut mounts = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = || BadLine(line.to_string());
        let (before, after) = line.split_once(" - ").ok_or_else(bad)?;
        let mount_point = before.split(' ').nth(4).ok_or_else(bad)?;
        let mut tail = after.split(' ');
        let fstype = tail.next().ok_or_else(bad)?;
        let _source = tail.next();
        mounts.push(MountEntry {
            mount_point: unescape(mount_point),
            fstype: fstype.to_string(),
            super_options: tail.next().unwrap_or("").to_string(),
        });
    }
    Ok(mounts)
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\011`, `\012`, `\134`).
fn unescape(field: &str) -> String {
    if !field.contains('\\') {
        return field.to_string();
    }
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            if let Some(v) = field
                .get(i + 1..i + 4)
                .and_then(|d| u8::from_str_radix(d, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_spaces_in_mount_points() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/end\\"), "/end\\");
    }

    #[test]
    fn reads_mount_point_type_and_super_options() {
        let text = "22 1 0:21 / /proc rw - proc proc rw\n\
                    40 31 0:37 / /sys/fs/cgroup/a\\040b rw,relatime shared:9 - cgroup cgroup rw,pids\n";
        let m = parse(text).expect("parses");
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].fstype, "proc");
        assert_eq!(m[1].mount_point, "/sys/fs/cgroup/a b");
        assert_eq!(m[1].fstype, "cgroup");
        assert_eq!(m[1].super_options, "rw,pids");
    }

    #[test]
    fn refuses_a_line_without_separator() {
        assert!(parse("garbage line\n").is_err());
    }
}
