//! A writer for the "newc" cpio format the kernel's initramfs unpacker reads
//! (Documentation/driver-api/early-userspace/buffer-format.rst): built here so that the image
//! needs no `cpio` tool, owns every file as root and is byte-for-byte reproducible.

use std::collections::BTreeSet;
use std::path::Path;

/// An archive being built in memory.
#[derive(Default)]
pub struct Archive {
    out: Vec<u8>,
    ino: u32,
    dirs: BTreeSet<String>,
}

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

impl Archive {
    /// One entry: the 110-byte ASCII header, the NUL-terminated name and the data, each padded
    /// to 4 bytes.
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        self.ino += 1;
        let fields = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            if mode & S_IFDIR != 0 { 2 } else { 1 },
            0, // mtime: reproducible
            u32::try_from(data.len()).unwrap_or(u32::MAX),
            0,
            0,
            rdev.0,
            rdev.1,
            u32::try_from(name.len() + 1).unwrap_or(u32::MAX),
            0, // check: only for the "070702" format
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while self.out.len() % 4 != 0 {
            self.out.push(0);
        }
    }

    /// A directory (once, whatever the number of calls).
    pub fn dir(&mut self, name: &str) {
        if self.dirs.insert(name.to_string()) {
            self.entry(name, S_IFDIR | 0o755, (0, 0), &[]);
        }
    }

    /// Every ancestor directory of `name`, outermost first.
    pub fn parents(&mut self, name: &str) {
        let parts: Vec<&str> = name.split('/').collect();
        for i in 1..parts.len() {
            self.dir(&parts[..i].join("/"));
        }
    }

    /// A regular file.
    pub fn file(&mut self, name: &str, perm: u32, data: Vec<u8>) {
        self.entry(name, S_IFREG | (perm & 0o7777), (0, 0), &data);
    }

    /// A symbolic link to `target`.
    pub fn symlink(&mut self, name: &str, target: &str) {
        self.entry(name, S_IFLNK | 0o777, (0, 0), target.as_bytes());
    }

    /// A character device node.
    pub fn char_dev(&mut self, name: &str, major: u32, minor: u32) {
        self.entry(name, S_IFCHR | 0o600, (major, minor), &[]);
    }

    /// Copies the tree at `src` to `dst` (files keep their permission bits, symlinks stay
    /// symlinks); `seen` is told every regular file's host path. Walks with an explicit stack.
    pub fn tree(&mut self, src: &Path, dst: &str, seen: &mut dyn FnMut(&Path)) -> crate::Result {
        use std::os::unix::fs::PermissionsExt;
        self.parents(&format!("{dst}/x"));
        let mut stack = vec![(src.to_path_buf(), dst.to_string())];
        while let Some((dir, name)) = stack.pop() {
            let mut entries: Vec<_> = std::fs::read_dir(&dir)
                .map_err(|e| format!("{}: {e}", dir.display()))?
                .filter_map(|e| e.ok())
                .collect();
            entries.sort_by_key(|e| e.file_name());
            for e in entries {
                let path = e.path();
                let child = format!("{name}/{}", e.file_name().to_string_lossy());
                let meta = std::fs::symlink_metadata(&path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                if meta.file_type().is_symlink() {
                    let target = std::fs::read_link(&path)
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                    self.symlink(&child, &target.to_string_lossy());
                } else if meta.is_dir() {
                    self.dir(&child);
                    stack.push((path, child));
                } else if meta.is_file() {
                    let data =
                        std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                    self.file(&child, meta.permissions().mode(), data);
                    seen(&path);
                }
            }
        }
        Ok(())
    }

    /// The archive with its `TRAILER!!!` entry.
    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_layout() {
        let mut a = Archive::default();
        a.file("init", 0o755, b"abc".to_vec());
        let out = a.finish();
        // Header: magic, ino 1, mode 0100755, ..., filesize 3, ..., namesize 5 ("init\0").
        assert_eq!(&out[..6], b"070701");
        assert_eq!(&out[6..14], b"00000001");
        assert_eq!(&out[14..22], b"000081ED");
        assert_eq!(&out[54..62], b"00000003");
        assert_eq!(&out[94..102], b"00000005");
        // 110 + 5 = 115 -> name padded to 116, data "abc" padded to 120.
        assert_eq!(&out[110..115], b"init\0");
        assert_eq!(&out[116..119], b"abc");
        assert_eq!(&out[120..126], b"070701");
        assert_eq!(out.len() % 4, 0);
        assert!(out.windows(10).any(|w| w == b"TRAILER!!!"));
    }

    #[test]
    fn dirs_once_and_parents() {
        let mut a = Archive::default();
        a.parents("lib/x86_64-linux-gnu/libz.so.1");
        a.dir("lib");
        let out = a.finish();
        let count = |needle: &[u8]| out.windows(needle.len()).filter(|w| *w == needle).count();
        assert_eq!(count(b"lib\0"), 1);
        assert_eq!(count(b"lib/x86_64-linux-gnu\0"), 1);
        assert_eq!(count(b"libz.so.1"), 0);
    }
}
