//! Unsynced contents of one regular file: dirty 4 KiB pages and a logical size kept in memory
//! over the backing file; `sync` makes them durable there and `cut` forgets them.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::time::SystemTime;

/// Size of the pages that hold unsynced data.
pub(crate) const PAGE: u64 = 4096;

/// The state of one open (or recently written) regular file, shared by all its handles.
///
/// Invariants: `floor <= size`; bytes of a dirty page at or past `size` are zero; backing
/// bytes at or past `floor` were truncated away (logically zero) and are not read.
pub(crate) struct Dirty {
    /// The backing file, opened read-write.
    pub(crate) file: File,
    /// Open FUSE handles on this inode.
    pub(crate) open: u32,
    /// Time of the last unsynced change, reported as mtime until it is synced.
    pub(crate) mtime: Option<SystemTime>,
    /// Logical size seen by programs.
    size: u64,
    /// Backing bytes at or past this offset are logically gone.
    floor: u64,
    /// Size of the backing file as last synced (or found).
    synced: u64,
    /// Dirty pages by index.
    pages: BTreeMap<u64, Box<[u8]>>,
}

/// Reads backing bytes at `off` into `buf`, treating bytes at or past `floor` (or past EOF)
/// as zeros; `buf` must come zeroed.
fn read_backing(file: &File, floor: u64, buf: &mut [u8], off: u64) -> io::Result<()> {
    let end = (off + buf.len() as u64).min(floor);
    if end <= off {
        return Ok(());
    }
    let buf = &mut buf[..(end - off) as usize];
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], off + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl Dirty {
    pub(crate) fn new(file: File) -> io::Result<Self> {
        let synced = file.metadata()?.len();
        Ok(Self {
            file,
            open: 0,
            mtime: None,
            size: synced,
            floor: synced,
            synced,
            pages: BTreeMap::new(),
        })
    }

    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// True when nothing differs from the backing file.
    pub(crate) fn is_clean(&self) -> bool {
        self.pages.is_empty() && self.size == self.synced && self.floor == self.synced
    }

    /// Bytes held in dirty pages.
    pub(crate) fn pending_bytes(&self) -> u64 {
        self.pages.len() as u64 * PAGE
    }

    pub(crate) fn read(&self, off: u64, len: u32) -> io::Result<Vec<u8>> {
        let end = off.saturating_add(u64::from(len)).min(self.size);
        if off >= end {
            return Ok(Vec::new());
        }
        let mut out = vec![0; (end - off) as usize];
        let mut pos = off;
        while pos < end {
            let start = pos / PAGE * PAGE;
            let stop = (start + PAGE).min(end);
            let dst = &mut out[(pos - off) as usize..(stop - off) as usize];
            match self.pages.get(&(pos / PAGE)) {
                Some(page) => {
                    dst.copy_from_slice(&page[(pos - start) as usize..(stop - start) as usize])
                }
                None => read_backing(&self.file, self.floor, dst, pos)?,
            }
            pos = stop;
        }
        Ok(out)
    }

    pub(crate) fn write(&mut self, off: u64, data: &[u8]) -> io::Result<()> {
        let end = off
            .checked_add(data.len() as u64)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EFBIG))?;
        let mut pos = off;
        while pos < end {
            let start = pos / PAGE * PAGE;
            let stop = (start + PAGE).min(end);
            let page = match self.pages.entry(pos / PAGE) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => {
                    let mut page = vec![0; PAGE as usize].into_boxed_slice();
                    if pos != start || stop != start + PAGE {
                        // Read-modify-write: a partial page starts from what the file holds.
                        read_backing(&self.file, self.floor, &mut page, start)?;
                    }
                    e.insert(page)
                }
            };
            page[(pos - start) as usize..(stop - start) as usize]
                .copy_from_slice(&data[(pos - off) as usize..(stop - off) as usize]);
            pos = stop;
        }
        self.size = self.size.max(end);
        self.mtime = Some(SystemTime::now());
        Ok(())
    }

    /// Truncates or extends the file in memory.
    pub(crate) fn set_size(&mut self, size: u64) {
        if size < self.size {
            drop(self.pages.split_off(&size.div_ceil(PAGE)));
            let tail = (size % PAGE) as usize;
            if let Some(page) = self.pages.get_mut(&(size / PAGE))
                && tail != 0
            {
                page[tail..].fill(0);
            }
            self.floor = self.floor.min(size);
        }
        self.size = size;
        self.mtime = Some(SystemTime::now());
    }

    /// Writes the dirty pages and size to the backing file, syncs it and forgets them.
    pub(crate) fn sync(&mut self) -> io::Result<()> {
        if self.floor < self.synced {
            self.file.set_len(self.floor)?;
        }
        for (&idx, page) in &self.pages {
            let start = idx * PAGE;
            let n = self.size.saturating_sub(start).min(PAGE) as usize;
            self.file.write_all_at(&page[..n], start)?;
        }
        if self.file.metadata()?.len() != self.size {
            self.file.set_len(self.size)?;
        }
        self.file.sync_all()?;
        self.pages.clear();
        self.floor = self.size;
        self.synced = self.size;
        self.mtime = None;
        Ok(())
    }

    /// The power cut: forgets every unsynced change.
    pub(crate) fn cut(&mut self) {
        self.pages.clear();
        self.size = self.synced;
        self.floor = self.synced;
        self.mtime = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirty_over(content: &[u8]) -> (tempfile::NamedTempFile, Dirty) {
        let tmp = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(tmp.path(), content).expect("write backing");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(tmp.path())
            .expect("open backing");
        let dirty = Dirty::new(file).expect("state");
        (tmp, dirty)
    }

    #[test]
    fn shrink_then_extend_reads_zeros_and_syncs_exactly() {
        let a: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8 + 1).collect();
        let (tmp, mut d) = dirty_over(&a);
        d.write(100, b"xy").expect("write");
        d.set_size(3_000);
        d.write(9_000, b"tail").expect("write");
        let mut want = a[..3_000].to_vec();
        want[100..102].copy_from_slice(b"xy");
        want.resize(9_000, 0);
        want.extend_from_slice(b"tail");
        assert_eq!(d.read(0, 20_000).expect("read"), want);
        assert_eq!(
            std::fs::read(tmp.path()).expect("backing"),
            a,
            "not synced yet"
        );

        d.sync().expect("sync");
        assert!(d.is_clean());
        assert_eq!(std::fs::read(tmp.path()).expect("backing"), want);
    }

    #[test]
    fn cut_restores_synced_state() {
        let (tmp, mut d) = dirty_over(b"hello world");
        d.set_size(5);
        d.write(8_190, b"across a page boundary").expect("write");
        assert!(d.pending_bytes() >= 2 * PAGE);
        d.cut();
        assert!(d.is_clean());
        assert_eq!(d.read(0, 100).expect("read"), b"hello world");
        assert_eq!(std::fs::read(tmp.path()).expect("backing"), b"hello world");
    }
}
