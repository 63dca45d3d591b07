//! The machine's own ceilings, measured in the same run as the broker so a result can be
//! quoted as a fraction of what the hardware allows: sequential O_DIRECT write and read
//! bandwidth of the disk holding a directory, the latency of a small durable write
//! (4 KiB O_DIRECT append + `fdatasync`, what one acks=all produce costs a disk at
//! least), and one TCP stream's bandwidth over loopback. Plain blocking std I/O: no
//! runtime of ours stands between the measurement and the kernel.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::error::{BenchError, Result};
use crate::latency::Percentiles;

/// Block size of the sequential disk and loopback transfers.
const BLOCK_BYTES: usize = 1024 * 1024;
/// Size of one durable write of the fsync probe.
const PROBE_BYTES: usize = 4096;
/// The sequential write stops at this size even if time is left.
const FILE_BYTES_MAX: u64 = 8 * 1024 * 1024 * 1024;
const ALIGN: usize = 4096;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    pub dir: String,
    pub seconds_each: f64,
    pub disk_write_mb_per_s: f64,
    pub disk_read_mb_per_s: f64,
    /// 4 KiB O_DIRECT append + fdatasync, back to back.
    pub fsync: Percentiles,
    pub loopback_mb_per_s: f64,
}

/// Measures all ceilings, `seconds` each, with files in `dir` (removed afterwards).
pub fn measure(dir: &Path, seconds: f64) -> Result<Baseline> {
    std::fs::create_dir_all(dir)
        .map_err(BenchError::io(format!("cannot create {}", dir.display())))?;
    let limit = Duration::from_secs_f64(seconds.max(0.5));
    let path = dir.join(".spate-bench-baseline");
    let outcome = (|| {
        let disk_write_mb_per_s = sequential_write(&path, limit)?;
        let disk_read_mb_per_s = sequential_read(&path)?;
        let fsync = fsync_probe(&path, limit)?;
        let loopback_mb_per_s = loopback(limit)?;
        Ok(Baseline {
            dir: dir.display().to_string(),
            seconds_each: limit.as_secs_f64(),
            disk_write_mb_per_s,
            disk_read_mb_per_s,
            fsync,
            loopback_mb_per_s,
        })
    })();
    let _ = std::fs::remove_file(&path);
    outcome
}

/// A zeroed buffer aligned for O_DIRECT.
struct Aligned {
    ptr: *mut u8,
    layout: Layout,
}

impl Aligned {
    fn new(bytes: usize) -> Aligned {
        let layout = Layout::from_size_align(bytes, ALIGN).expect("a valid layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "out of memory for an I/O buffer");
        Aligned { ptr, layout }
    }

    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` owns `layout.size()` initialised bytes for the buffer's life.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr, self.layout) }
    }
}

fn open_direct(path: &Path, write: bool) -> Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).custom_flags(libc::O_DIRECT);
    if write {
        options.write(true).create(true).truncate(true);
    }
    options.open(path).map_err(BenchError::io(format!(
        "cannot open {} with O_DIRECT (is it on a disk, not tmpfs?)",
        path.display()
    )))
}

fn sequential_write(path: &Path, limit: Duration) -> Result<f64> {
    let file = open_direct(path, true)?;
    let mut buffer = Aligned::new(BLOCK_BYTES);
    for (i, b) in buffer.as_mut().iter_mut().enumerate() {
        *b = (i * 31 % 251) as u8;
    }
    let started = Instant::now();
    let mut written = 0u64;
    while started.elapsed() < limit && written < FILE_BYTES_MAX {
        file.write_all_at(buffer.as_mut(), written)
            .map_err(BenchError::io(format!("cannot write {}", path.display())))?;
        written += BLOCK_BYTES as u64;
    }
    file.sync_data().map_err(BenchError::io(format!(
        "cannot fdatasync {}",
        path.display()
    )))?;
    Ok(written as f64 / 1e6 / started.elapsed().as_secs_f64())
}

fn sequential_read(path: &Path) -> Result<f64> {
    let file = open_direct(path, false)?;
    let size = file
        .metadata()
        .map_err(BenchError::io(format!("cannot stat {}", path.display())))?
        .len();
    let mut buffer = Aligned::new(BLOCK_BYTES);
    let started = Instant::now();
    let mut read = 0u64;
    while read < size {
        let n = file
            .read_at(buffer.as_mut(), read)
            .map_err(BenchError::io(format!("cannot read {}", path.display())))?;
        if n == 0 {
            break;
        }
        read += n as u64;
    }
    Ok(read as f64 / 1e6 / started.elapsed().as_secs_f64())
}

fn fsync_probe(path: &Path, limit: Duration) -> Result<Percentiles> {
    let file = open_direct(path, true)?;
    let mut buffer = Aligned::new(PROBE_BYTES);
    buffer.as_mut().fill(7);
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
    let started = Instant::now();
    let mut at = 0u64;
    while started.elapsed() < limit {
        let t = Instant::now();
        file.write_all_at(buffer.as_mut(), at)
            .map_err(BenchError::io(format!("cannot write {}", path.display())))?;
        file.sync_data().map_err(BenchError::io(format!(
            "cannot fdatasync {}",
            path.display()
        )))?;
        histogram.saturating_record((t.elapsed().as_micros() as u64).max(1));
        at += PROBE_BYTES as u64;
    }
    Ok(Percentiles::of(&histogram))
}

fn loopback(limit: Duration) -> Result<f64> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(BenchError::io("cannot listen on loopback"))?;
    let address = listener
        .local_addr()
        .map_err(BenchError::io("cannot listen on loopback"))?;
    let reader = std::thread::spawn(move || -> std::io::Result<(u64, Instant)> {
        let (mut stream, _) = listener.accept()?;
        let mut buffer = vec![0u8; BLOCK_BYTES];
        let mut total = 0u64;
        loop {
            match stream.read(&mut buffer)? {
                0 => return Ok((total, Instant::now())),
                n => total += n as u64,
            }
        }
    });
    let mut stream = std::net::TcpStream::connect(address)
        .map_err(BenchError::io("cannot connect on loopback"))?;
    let buffer = vec![0x5au8; BLOCK_BYTES];
    let started = Instant::now();
    while started.elapsed() < limit {
        stream
            .write_all(&buffer)
            .map_err(BenchError::io("cannot write on loopback"))?;
    }
    drop(stream);
    let (total, ended) = reader
        .join()
        .map_err(|_| BenchError::Runtime("the loopback reader failed".into()))?
        .map_err(BenchError::io("cannot read on loopback"))?;
    Ok(total as f64 / 1e6 / (ended - started).as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_ceiling_is_measured_and_the_probe_file_removed() {
        // In the target directory: /tmp may be a tmpfs, which refuses O_DIRECT.
        let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
        std::fs::create_dir_all(&target).unwrap();
        let dir = tempfile::tempdir_in(target).unwrap();
        let b = measure(dir.path(), 0.5).unwrap();
        assert!(b.disk_write_mb_per_s > 0.0 && b.disk_read_mb_per_s > 0.0);
        assert!(b.loopback_mb_per_s > 0.0);
        assert!(b.fsync.count > 0 && b.fsync.p50_us > 0);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
