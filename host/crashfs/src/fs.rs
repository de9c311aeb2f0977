//! The FUSE operations: a passthrough of the backing directory whose regular files keep
//! unsynced writes in memory (see `dirty`), plus the power cut that drops them.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File, FileTimes, Metadata, OpenOptions, Permissions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use crate::dirty::Dirty;

/// Entries and attributes are never cached by the kernel: sizes are always fresh.
const TTL: Duration = Duration::ZERO;

/// SQLite's shared-memory wal-index: mmapped, so served without direct I/O and written through.
pub(crate) fn is_shm(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.as_bytes().ends_with(b"-shm"))
}

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

fn c_path(path: &Path) -> io::Result<CString> {
    Ok(CString::new(path.as_os_str().as_bytes())?)
}

enum Handle {
    /// A regular file whose data goes through its inode's `Dirty` state.
    File(u64),
    /// A `-shm` file, read and written straight through.
    Shm(File),
    /// A directory listing taken at opendir.
    Dir(Vec<(u64, FileType, OsString)>),
}

/// Everything the filesystem knows, behind one lock.
pub(crate) struct State {
    root: PathBuf,
    /// FUSE inode -> backing path.
    paths: HashMap<u64, PathBuf>,
    /// Backing (dev, ino) -> FUSE inode.
    inos: HashMap<(u64, u64), u64>,
    next_ino: u64,
    /// Per-inode unsynced state of regular files.
    files: HashMap<u64, Dirty>,
    handles: HashMap<u64, Handle>,
    next_fh: u64,
}

pub(crate) type Shared = Arc<Mutex<State>>;

pub(crate) fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

fn to_attr(ino: u64, m: &Metadata) -> FileAttr {
    let ctime = u64::try_from(m.ctime()).map_or(UNIX_EPOCH, |s| {
        UNIX_EPOCH + Duration::new(s, m.ctime_nsec().clamp(0, 999_999_999) as u32)
    });
    FileAttr {
        ino: INodeNo(ino),
        size: m.size(),
        blocks: m.blocks(),
        atime: m.accessed().unwrap_or(UNIX_EPOCH),
        mtime: m.modified().unwrap_or(UNIX_EPOCH),
        ctime,
        crtime: UNIX_EPOCH,
        kind: FileType::from_std(m.file_type()).unwrap_or(FileType::RegularFile),
        perm: (m.mode() & 0o7777) as u16,
        nlink: m.nlink().try_into().unwrap_or(u32::MAX),
        uid: m.uid(),
        gid: m.gid(),
        rdev: m.rdev().try_into().unwrap_or(0),
        blksize: 4096,
        flags: 0,
    }
}

fn time(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

fn open_rw(path: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).write(true).open(path)
}

impl State {
    pub(crate) fn new(root: PathBuf) -> io::Result<Self> {
        let m = fs::metadata(&root)?;
        if !m.is_dir() {
            return Err(errno(libc::ENOTDIR));
        }
        Ok(Self {
            paths: HashMap::from([(INodeNo::ROOT.0, root.clone())]),
            inos: HashMap::from([((m.dev(), m.ino()), INodeNo::ROOT.0)]),
            root,
            next_ino: INodeNo::ROOT.0 + 1,
            files: HashMap::new(),
            handles: HashMap::new(),
            next_fh: 1,
        })
    }

    fn path(&self, ino: u64) -> io::Result<&Path> {
        self.paths
            .get(&ino)
            .map(PathBuf::as_path)
            .ok_or_else(|| errno(libc::ENOENT))
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> io::Result<PathBuf> {
        Ok(self.path(parent.0)?.join(name))
    }

    /// The FUSE inode of a backing file, allocated on first sight.
    fn intern(&mut self, path: PathBuf, m: &Metadata) -> u64 {
        let next = &mut self.next_ino;
        let ino = *self.inos.entry((m.dev(), m.ino())).or_insert_with(|| {
            *next += 1;
            *next - 1
        });
        self.paths.insert(ino, path);
        ino
    }

    fn attr(&self, ino: u64) -> io::Result<FileAttr> {
        if let Some(d) = self.files.get(&ino) {
            let mut attr = to_attr(ino, &d.file.metadata()?);
            attr.size = d.size();
            attr.blocks = attr.size.div_ceil(512);
            if let Some(t) = d.mtime {
                attr.mtime = t;
                attr.ctime = t;
            }
            return Ok(attr);
        }
        Ok(to_attr(ino, &fs::symlink_metadata(self.path(ino)?)?))
    }

    fn entry(&mut self, path: PathBuf) -> io::Result<FileAttr> {
        let m = fs::symlink_metadata(&path)?;
        let ino = self.intern(path, &m);
        self.attr(ino)
    }

    fn dirty(&mut self, ino: u64) -> io::Result<&mut Dirty> {
        Ok(match self.files.entry(ino) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let path = self.paths.get(&ino).ok_or_else(|| errno(libc::ENOENT))?;
                e.insert(Dirty::new(open_rw(path)?)?)
            }
        })
    }

    /// Drops the state of a file nobody has open if it holds nothing or was unlinked.
    fn drop_if_idle(&mut self, ino: u64) {
        let idle = self.files.get(&ino).is_some_and(|d| {
            d.open == 0 && (d.is_clean() || d.file.metadata().map_or(true, |m| m.nlink() == 0))
        });
        if idle {
            self.files.remove(&ino);
        }
    }

    /// Forgets the name `path` (removed from the backing directory) of the inode `m`.
    fn forget_path(&mut self, path: &Path, m: &Metadata) {
        let key = (m.dev(), m.ino());
        let Some(&ino) = self.inos.get(&key) else {
            return;
        };
        if self.paths.get(&ino).is_some_and(|p| p == path) {
            self.paths.remove(&ino);
        }
        if m.is_dir() || m.nlink() <= 1 {
            self.inos.remove(&key);
        }
        self.drop_if_idle(ino);
    }

    fn open(&mut self, ino: u64) -> io::Result<(FileHandle, FopenFlags)> {
        let path = self.path(ino)?;
        let (handle, flags) = if is_shm(path) {
            (Handle::Shm(open_rw(path)?), FopenFlags::empty())
        } else {
            self.dirty(ino)?.open += 1;
            (Handle::File(ino), FopenFlags::FOPEN_DIRECT_IO)
        };
        let fh = self.next_fh;
        self.next_fh += 1;
        self.handles.insert(fh, handle);
        Ok((FileHandle(fh), flags))
    }

    fn release(&mut self, fh: FileHandle) {
        if let Some(Handle::File(ino)) = self.handles.remove(&fh.0) {
            if let Some(d) = self.files.get_mut(&ino) {
                d.open = d.open.saturating_sub(1);
            }
            self.drop_if_idle(ino);
        }
    }

    fn create(
        &mut self,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
    ) -> io::Result<(FileAttr, FileHandle, FopenFlags)> {
        let path = self.child(parent, name)?;
        let mut options = OpenOptions::new();
        options.write(true).mode(mode & !umask & 0o7777);
        if flags & libc::O_EXCL != 0 {
            options.create_new(true);
        } else {
            options.create(true);
        }
        drop(options.open(&path)?);
        let attr = self.entry(path)?;
        let (fh, open_flags) = self.open(attr.ino.0)?;
        Ok((attr, fh, open_flags))
    }

    #[allow(clippy::too_many_arguments)]
    fn setattr(
        &mut self,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
    ) -> io::Result<FileAttr> {
        if let Some(size) = size {
            let path = self.path(ino)?;
            if is_shm(path) {
                open_rw(path)?.set_len(size)?;
            } else {
                self.dirty(ino)?.set_size(size);
            }
        }
        if mode.is_some() || uid.is_some() || gid.is_some() || atime.is_some() || mtime.is_some() {
            let opened;
            let file = match self.files.get_mut(&ino) {
                Some(d) => {
                    if mtime.is_some() {
                        d.mtime = None;
                    }
                    &d.file
                }
                None => {
                    let path = self.paths.get(&ino).ok_or_else(|| errno(libc::ENOENT))?;
                    opened = File::open(path)?;
                    &opened
                }
            };
            if let Some(mode) = mode {
                file.set_permissions(Permissions::from_mode(mode & 0o7777))?;
            }
            if uid.is_some() || gid.is_some() {
                std::os::unix::fs::fchown(file, uid, gid)?;
            }
            let mut times = FileTimes::new();
            if let Some(t) = atime {
                times = times.set_accessed(time(t));
            }
            if let Some(t) = mtime {
                times = times.set_modified(time(t));
            }
            if atime.is_some() || mtime.is_some() {
                file.set_times(times)?;
            }
        }
        let attr = self.attr(ino);
        self.drop_if_idle(ino);
        attr
    }

    fn rename(
        &mut self,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
    ) -> io::Result<()> {
        if !flags.is_empty() {
            return Err(errno(libc::EINVAL));
        }
        let from = self.child(parent, name)?;
        let to = self.child(newparent, newname)?;
        let moved = fs::symlink_metadata(&from)?;
        let replaced = fs::symlink_metadata(&to).ok();
        fs::rename(&from, &to)?;
        if let Some(m) = replaced
            && (m.dev(), m.ino()) != (moved.dev(), moved.ino())
        {
            self.forget_path(&to, &m);
        }
        for path in self.paths.values_mut() {
            if let Ok(rest) = path.strip_prefix(&from) {
                *path = if rest.as_os_str().is_empty() {
                    to.clone()
                } else {
                    to.join(rest)
                };
            }
        }
        Ok(())
    }

    fn opendir(&mut self, ino: u64) -> io::Result<FileHandle> {
        let path = self.path(ino)?.to_path_buf();
        let up = match path.parent() {
            Some(parent) if ino != INodeNo::ROOT.0 => {
                let m = fs::symlink_metadata(parent)?;
                self.intern(parent.to_path_buf(), &m)
            }
            _ => INodeNo::ROOT.0,
        };
        let mut list = vec![
            (ino, FileType::Directory, OsString::from(".")),
            (up, FileType::Directory, OsString::from("..")),
        ];
        for entry in fs::read_dir(&path)? {
            let entry = entry?;
            let child = entry.path();
            // An entry removed meanwhile is simply not listed.
            let Ok(m) = fs::symlink_metadata(&child) else {
                continue;
            };
            let kind = FileType::from_std(m.file_type()).unwrap_or(FileType::RegularFile);
            let child_ino = self.intern(child, &m);
            list.push((child_ino, kind, entry.file_name()));
        }
        let fh = self.next_fh;
        self.next_fh += 1;
        self.handles.insert(fh, Handle::Dir(list));
        Ok(FileHandle(fh))
    }

    fn read(&self, fh: FileHandle, offset: u64, size: u32) -> io::Result<Vec<u8>> {
        match self.handles.get(&fh.0) {
            Some(Handle::File(ino)) => self
                .files
                .get(ino)
                .ok_or_else(|| errno(libc::EBADF))?
                .read(offset, size),
            Some(Handle::Shm(file)) => {
                let mut buf = vec![0; size as usize];
                let mut done = 0;
                while done < buf.len() {
                    match file.read_at(&mut buf[done..], offset + done as u64)? {
                        0 => break,
                        n => done += n,
                    }
                }
                buf.truncate(done);
                Ok(buf)
            }
            _ => Err(errno(libc::EBADF)),
        }
    }

    fn write(&mut self, fh: FileHandle, offset: u64, data: &[u8]) -> io::Result<()> {
        match self.handles.get(&fh.0) {
            Some(&Handle::File(ino)) => self
                .files
                .get_mut(&ino)
                .ok_or_else(|| errno(libc::EBADF))?
                .write(offset, data),
            Some(Handle::Shm(file)) => file.write_all_at(data, offset),
            _ => Err(errno(libc::EBADF)),
        }
    }

    fn fsync(&mut self, fh: FileHandle) -> io::Result<()> {
        match self.handles.get(&fh.0) {
            Some(&Handle::File(ino)) => self
                .files
                .get_mut(&ino)
                .ok_or_else(|| errno(libc::EBADF))?
                .sync(),
            Some(Handle::Shm(file)) => file.sync_all(),
            _ => Err(errno(libc::EBADF)),
        }
    }

    pub(crate) fn pending_bytes(&self) -> u64 {
        self.files.values().map(Dirty::pending_bytes).sum()
    }

    /// The power cut: forgets all unsynced data and empties every `-shm` backing file.
    pub(crate) fn cut(&mut self) -> io::Result<()> {
        for d in self.files.values_mut() {
            d.cut();
        }
        self.files.retain(|_, d| d.open > 0);
        truncate_shm(&self.root)
    }
}

fn truncate_shm(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            truncate_shm(&entry.path())?;
        } else if kind.is_file() && is_shm(&entry.path()) {
            open_rw(&entry.path())?.set_len(0)?;
        }
    }
    Ok(())
}

/// The `fuser` filesystem: every operation takes the shared state's lock.
pub(crate) struct CrashFsOps {
    state: Shared,
}

impl CrashFsOps {
    pub(crate) fn new(state: Shared) -> Self {
        Self { state }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }
}

fn empty(reply: ReplyEmpty, result: io::Result<()>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(Errno::from(e)),
    }
}

fn entry(reply: ReplyEntry, result: io::Result<FileAttr>) {
    match result {
        Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
        Err(e) => reply.error(Errno::from(e)),
    }
}

impl Filesystem for CrashFsOps {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut st = self.state();
        let result = st.child(parent, name).and_then(|p| st.entry(p));
        entry(reply, result);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.state().attr(ino.0) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(Errno::from(e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let result = self
            .state()
            .setattr(ino.0, mode, uid, gid, size, atime, mtime);
        match result {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(Errno::from(e)),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let mut st = self.state();
        let result = st.child(parent, name).and_then(|path| {
            fs::DirBuilder::new()
                .mode(mode & !umask & 0o7777)
                .create(&path)?;
            st.entry(path)
        });
        entry(reply, result);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut st = self.state();
        let result = st.child(parent, name).and_then(|path| {
            let m = fs::symlink_metadata(&path)?;
            fs::remove_file(&path)?;
            st.forget_path(&path, &m);
            Ok(())
        });
        empty(reply, result);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut st = self.state();
        let result = st.child(parent, name).and_then(|path| {
            let m = fs::symlink_metadata(&path)?;
            fs::remove_dir(&path)?;
            st.forget_path(&path, &m);
            Ok(())
        });
        empty(reply, result);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let result = self.state().rename(parent, name, newparent, newname, flags);
        empty(reply, result);
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.state().open(ino.0) {
            Ok((fh, flags)) => reply.opened(fh, flags),
            Err(e) => reply.error(Errno::from(e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.state().read(fh, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(Errno::from(e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let Ok(len) = u32::try_from(data.len()) else {
            return reply.error(Errno::EINVAL);
        };
        match self.state().write(fh, offset, data) {
            Ok(()) => reply.written(len),
            Err(e) => reply.error(Errno::from(e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close() is not a sync point: nothing to do.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.state().release(fh);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let result = self.state().fsync(fh);
        empty(reply, result);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.state().opendir(ino.0) {
            Ok(fh) => reply.opened(fh, FopenFlags::empty()),
            Err(e) => reply.error(Errno::from(e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let st = self.state();
        let Some(Handle::Dir(list)) = st.handles.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, (ino, kind, name)) in list.iter().enumerate().skip(skip) {
            if reply.add(INodeNo(*ino), i as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.state().handles.remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Metadata is already durable in the backing directory; sync it for real anyway.
        let path = self.state().path(ino.0).map(Path::to_path_buf);
        empty(reply, path.and_then(|p| File::open(p)?.sync_all()));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let root = self.state().root.clone();
        let result = c_path(&root).and_then(|c| {
            // SAFETY: statvfs is plain old data, for which all zeros is a valid value.
            let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
            // SAFETY: `c` is a NUL-terminated path and `st` a valid, writable statvfs.
            if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(st)
        });
        match result {
            Ok(st) => reply.statfs(
                st.f_blocks,
                st.f_bfree,
                st.f_bavail,
                st.f_files,
                st.f_ffree,
                st.f_bsize.try_into().unwrap_or(4096),
                st.f_namemax.try_into().unwrap_or(255),
                st.f_frsize.try_into().unwrap_or(4096),
            ),
            Err(e) => reply.error(Errno::from(e)),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let path = self.state().path(ino.0).map(Path::to_path_buf);
        let result = path.and_then(|p| c_path(&p)).and_then(|c| {
            // SAFETY: `c` is a NUL-terminated path.
            if unsafe { libc::access(c.as_ptr(), mask.bits()) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
        empty(reply, result);
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        match self.state().create(parent, name, mode, umask, flags) {
            Ok((attr, fh, open_flags)) => reply.created(&TTL, &attr, Generation(0), fh, open_flags),
            Err(e) => reply.error(Errno::from(e)),
        }
    }
}
