//! A job's source: a JSON Lines file (gzip'd when it starts with gzip's magic bytes), read as
//! numbered lines. Record numbers are line numbers (0-based), so a range of records is stable
//! across restarts and hosts; empty lines are counted but never handed out.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// One line of the source: its number and its text, or why it is not a record.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub number: u64,
    pub text: Result<String, String>,
}

/// A JSON Lines file.
#[derive(Debug, Clone)]
pub struct JsonLinesSource {
    path: PathBuf,
}

impl JsonLinesSource {
    /// Checks that `path` is a readable file.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        File::open(path).map_err(|e| {
            anyhow::anyhow!(
                "cannot read the job's source {}: {e}\n  help: check the path (relative paths are from the manifest's directory)",
                path.display()
            )
        })?;
        Ok(JsonLinesSource {
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn raw(&self) -> io::Result<Box<dyn BufRead + Send>> {
        let mut file = File::open(&self.path)?;
        let mut magic = [0u8; 2];
        let gz = file.read(&mut magic)? == 2 && magic == [0x1f, 0x8b];
        let file = File::open(&self.path)?;
        Ok(if gz {
            Box::new(BufReader::with_capacity(
                1 << 16,
                flate2::read::MultiGzDecoder::new(BufReader::new(file)),
            ))
        } else {
            Box::new(BufReader::with_capacity(1 << 16, file))
        })
    }

    /// How many lines the file has (a last line without a newline counts).
    pub fn count(&self) -> io::Result<u64> {
        let mut reader = self.raw()?;
        let mut lines = 0u64;
        let mut last = b'\n';
        loop {
            let buffer = reader.fill_buf()?;
            if buffer.is_empty() {
                break;
            }
            lines += buffer.iter().filter(|b| **b == b'\n').count() as u64;
            last = buffer[buffer.len() - 1];
            let n = buffer.len();
            reader.consume(n);
        }
        Ok(lines + u64::from(last != b'\n'))
    }

    /// A reader positioned at line `first`.
    pub fn reader_at(&self, first: u64) -> io::Result<LineReader> {
        let mut reader = LineReader {
            inner: self.raw()?,
            next: 0,
            buffer: Vec::new(),
        };
        while reader.next < first {
            reader.buffer.clear();
            if reader.inner.read_until(b'\n', &mut reader.buffer)? == 0 {
                break;
            }
            reader.next += 1;
        }
        Ok(reader)
    }
}

/// Reads numbered lines onward from a position.
pub struct LineReader {
    inner: Box<dyn BufRead + Send>,
    next: u64,
    buffer: Vec<u8>,
}

impl LineReader {
    /// The number of the next line it reads.
    pub fn position(&self) -> u64 {
        self.next
    }

    /// The next lines up to (not including) line `end`, at most `max` of them; empty lines are
    /// passed over (and counted). An empty result means the end of the range or of the file.
    pub fn read(&mut self, max: usize, end: u64) -> io::Result<Vec<Line>> {
        let mut out = Vec::with_capacity(max);
        while self.next < end && out.len() < max {
            self.buffer.clear();
            if self.inner.read_until(b'\n', &mut self.buffer)? == 0 {
                break;
            }
            let number = self.next;
            self.next += 1;
            let bytes = self.buffer.strip_suffix(b"\n").unwrap_or(&self.buffer);
            let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
            if bytes.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let text = String::from_utf8(bytes.to_vec())
                .map_err(|e| format!("line {} is not UTF-8: {e}", number + 1));
            out.push(Line { number, text });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn write(dir: &Path, name: &str, text: &[u8], gzip: bool) -> PathBuf {
        let path = dir.join(name);
        let file = File::create(&path).expect("create");
        if gzip {
            let mut encoder = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
            encoder.write_all(text).expect("write");
            encoder.finish().expect("finish");
        } else {
            let mut file = file;
            file.write_all(text).expect("write");
        }
        path
    }

    #[test]
    fn lines_are_numbered_the_same_plain_or_gzipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = b"{\"a\":1}\n\n{\"a\":3}\r\n\xff\xfe\n{\"a\":5}";
        for gzip in [false, true] {
            let source = JsonLinesSource::open(&write(dir.path(), &format!("s{gzip}"), text, gzip))
                .expect("opens");
            assert_eq!(source.count().expect("count"), 5);
            let mut reader = source.reader_at(0).expect("reader");
            let lines = reader.read(10, 5).expect("read");
            let numbers: Vec<u64> = lines.iter().map(|l| l.number).collect();
            assert_eq!(numbers, [0, 2, 3, 4], "empty line 1 passed over");
            assert_eq!(lines[1].text, Ok("{\"a\":3}".to_string()));
            assert!(
                lines[2].text.is_err(),
                "invalid UTF-8 is a reason, not a crash"
            );
            // Resuming in the middle sees the same numbers; a range stops at its end.
            let mut reader = source.reader_at(2).expect("reader");
            let lines = reader.read(10, 4).expect("read");
            assert_eq!(lines.iter().map(|l| l.number).collect::<Vec<_>>(), [2, 3]);
            assert_eq!(reader.position(), 4);
            assert!(reader.read(10, 4).expect("read").is_empty());
        }
        assert!(JsonLinesSource::open(&dir.path().join("missing")).is_err());
    }
}
