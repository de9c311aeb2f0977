//! A FUSE filesystem for tests that simulates a power cut, in the spirit of LazyFS: writes not
//! yet fsynced stay in memory, and [`CrashFsHandle::cut`] drops them.
//!
//! [`CrashFs::mount`] serves the files of a real `backing` directory at `mountpoint`.
//!
//! What is simulated:
//! - File data and size: every write and truncate of a regular file is kept in memory (dirty
//!   4 KiB pages over the backing file plus a logical size), shared by all handles of the inode.
//!   Programs see their own writes. `fsync`/`fdatasync` of a file writes its pages and size to
//!   the backing file and syncs it. `cut()` forgets all of it, for every file.
//! - Files are opened with `FOPEN_DIRECT_IO`, so the kernel page cache never holds unsynced
//!   data: after a cut, a restarted program reads exactly what was synced.
//! - SQLite's `*-shm` files (its mmapped wal-index) are the exception: they are opened without
//!   direct I/O (`MAP_SHARED` needs the page cache) and written straight through, and `cut()`
//!   empties every `*-shm` backing file, as a power cut loses shared memory.
//!
//! What is not simulated:
//! - Metadata: create, mkdir, unlink, rmdir, rename, chmod, chown and utimes go straight to the
//!   backing directory and are durable at once (a newly created file is durable, but empty until
//!   its data is synced). A real filesystem may lose or reorder them; this one never does.
//! - Torn or reordered writes within the unsynced data: a cut drops all of it, never a part.
//! - Hard links, symlink creation, xattrs, fallocate. POSIX locks are left to the kernel (the
//!   filesystem does not implement getlk/setlk), which is correct for processes on one machine.
//!
//! The caller must stop (kill) every program using the mount before calling `cut()`: a program
//! still running would see its own unsynced writes vanish, and emptying `*-shm` files is only
//! valid when nobody has them mapped.
//!
//! SQLite: with `synchronous=OFF`, the checkpoint SQLite runs when the last connection closes
//! copies the WAL into the database without fsync and then deletes the WAL; as the unlink is
//! durable at once, a cut after such a close loses the fsynced commits too (the database reopens
//! empty). That order is possible on real disks too. Tests that close connections before the
//! cut should set `SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE`, or kill the program instead of closing.
//!
//! Mounting needs `/dev/fuse` and root (the `mount` syscall is used; there is no `fusermount`).

mod dirty;
mod fs;

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use fuser::{BackgroundSession, Config, MountOption, SessionACL};

use crate::fs::{CrashFsOps, Shared, State, lock};

/// Entry point: mounts a crash-simulating filesystem.
#[derive(Debug, Clone, Copy)]
pub struct CrashFs;

impl CrashFs {
    /// Serves `backing` (an existing directory) at `mountpoint` (an existing directory) until the
    /// returned handle is dropped.
    pub fn mount(backing: &Path, mountpoint: &Path) -> io::Result<CrashFsHandle> {
        if !Path::new("/dev/fuse").exists() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "crashfs: /dev/fuse is missing; it needs the fuse kernel module (and root)",
            ));
        }
        let backing = backing.canonicalize()?;
        let mountpoint = mountpoint.canonicalize()?;
        let state: Shared = Arc::new(Mutex::new(State::new(backing.clone())?));
        let mut config = Config::default();
        config.mount_options = vec![MountOption::FSName("crashfs".to_string())];
        config.acl = SessionACL::All;
        let session = fuser::spawn_mount(CrashFsOps::new(Arc::clone(&state)), &mountpoint, &config)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("crashfs: mounting at {}: {e}", mountpoint.display()),
                )
            })?;
        Ok(CrashFsHandle {
            state,
            session: Some(session),
            mountpoint,
            backing,
        })
    }
}

/// A mounted crashfs. Dropping it unmounts (lazily, if the mount is busy).
pub struct CrashFsHandle {
    state: Shared,
    session: Option<BackgroundSession>,
    mountpoint: PathBuf,
    backing: PathBuf,
}

impl std::fmt::Debug for CrashFsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrashFsHandle")
            .field("mountpoint", &self.mountpoint)
            .field("backing", &self.backing)
            .finish_non_exhaustive()
    }
}

impl CrashFsHandle {
    /// Where the filesystem is mounted (canonical path).
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The directory whose files are served (canonical path).
    pub fn backing(&self) -> &Path {
        &self.backing
    }

    /// The power cut: drops every write not yet fsynced, for all files, and empties every
    /// `*-shm` file. Kill the programs using the mount first.
    pub fn cut(&self) -> io::Result<()> {
        lock(&self.state).cut()
    }

    /// Bytes held in dirty (unsynced) pages, for diagnostics.
    pub fn pending_bytes(&self) -> u64 {
        lock(&self.state).pending_bytes()
    }

    /// Unmounts now, reporting errors that `Drop` can only print.
    pub fn unmount(mut self) -> io::Result<()> {
        self.unmount_inner()
    }

    fn unmount_inner(&mut self) -> io::Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        match session.umount_and_join() {
            Ok(()) => Ok(()),
            Err(err) if is_mounted(&self.mountpoint)? => {
                // Busy (a file is still open): detach it from the tree now; the session thread
                // serves the open files and ends when the last one is closed.
                let path = CString::new(self.mountpoint.as_os_str().as_bytes())?;
                // SAFETY: `path` is a NUL-terminated path.
                if unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                eprintln!(
                    "crashfs: {} was busy ({err}); detached it lazily",
                    self.mountpoint.display()
                );
                Ok(())
            }
            Err(err) => Err(err),
        }
    }
}

impl Drop for CrashFsHandle {
    fn drop(&mut self) {
        if let Err(e) = self.unmount_inner() {
            eprintln!("crashfs: unmounting {}: {e}", self.mountpoint.display());
        }
    }
}

/// Whether `path` is a mount point in this process's mount namespace (per /proc/self/mountinfo).
pub fn is_mounted(path: &Path) -> io::Result<bool> {
    let mountinfo = std::fs::read("/proc/self/mountinfo")?;
    let want = path.as_os_str().as_bytes();
    Ok(mountinfo.split(|&b| b == b'\n').any(|line| {
        line.split(|&b| b == b' ')
            .nth(4)
            .is_some_and(|field| unescape(field) == want)
    }))
}

/// Undoes mountinfo's octal escapes (`\040` for a space, and so on).
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let octal = field.get(i + 1..i + 4).and_then(|d| {
            let n = d.iter().try_fold(0u32, |acc, &c| {
                (b'0'..=b'7')
                    .contains(&c)
                    .then(|| acc * 8 + u32::from(c - b'0'))
            })?;
            u8::try_from(n).ok()
        });
        match octal {
            Some(byte) if field[i] == b'\\' => {
                out.push(byte);
                i += 4;
            }
            _ => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    out
}
