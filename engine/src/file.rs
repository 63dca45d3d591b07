//! File I/O through glommio: the one module (with `shard`) that knows the runtime.
//!
//! Segment data goes through `DmaFile` (O_DIRECT, io_uring). Small files (indexes,
//! metadata) are written whole and replaced atomically: write a temporary, `fdatasync`,
//! rename over the old name, `fsync` the directory. A reader therefore sees the old file
//! or the new one, never a mix, whatever the moment of a crash.

use std::path::{Path, PathBuf};

use glommio::io::{DmaFile, OpenOptions};

use crate::error::{EngineError, Result};
use crate::limits::{DIRECT_IO_ALIGNMENT, METADATA_FILE_BYTES_MAX};

/// Rounds `v` up to the O_DIRECT alignment.
pub fn align_up(v: u64) -> u64 {
    v.div_ceil(DIRECT_IO_ALIGNMENT) * DIRECT_IO_ALIGNMENT
}

/// Rounds `v` down to the O_DIRECT alignment.
pub fn align_down(v: u64) -> u64 {
    v - v % DIRECT_IO_ALIGNMENT
}

thread_local! {
    /// Set once this thread's executor has let glommio probe the data device. glommio
    /// caches its probe per thread, so this flag is per thread too.
    static DEVICE_PROBED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Makes glommio decide correctly whether the data device supports polled I/O.
///
/// glommio probes a device the first time a thread opens a DMA file on it, by reading
/// one block at offset 0 through the poll ring, and caches the answer for the thread. On an
/// empty file that read ends at EOF without reaching the device and "succeeds", so the
/// first empty file (a new segment, a temporary) makes glommio believe in polled I/O
/// that the device may not have; every later read then fails with EOPNOTSUPP (seen on
/// virtio disks). So before any other DMA file, we open one that holds a block of data.
pub async fn probe_device(dir: &Path) -> Result<()> {
    if DEVICE_PROBED.get() {
        return Ok(());
    }
    let thread = format!("{:?}", std::thread::current().id())
        .replace(|c: char| !c.is_ascii_alphanumeric(), "");
    let path = dir.join(format!(".device-probe-{}-{thread}", std::process::id()));
    std::fs::write(&path, vec![0u8; DIRECT_IO_ALIGNMENT as usize])
        .map_err(|e| EngineError::io("write", &path, e))?;
    let opened = DmaFile::open(&path).await;
    let _ = std::fs::remove_file(&path);
    let file = opened.map_err(|e| EngineError::glommio("open", &path, e))?;
    file.close()
        .await
        .map_err(|e| EngineError::glommio("close", &path, e))?;
    DEVICE_PROBED.set(true);
    Ok(())
}

/// Opens (optionally creating) a file for O_DIRECT reads and writes.
pub async fn open_dma(path: &Path, create: bool) -> Result<DmaFile> {
    if let Some(dir) = path.parent() {
        probe_device(dir).await?;
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .dma_open(path)
        .await
        .map_err(|e| EngineError::glommio("open", path, e))
}

/// Opens a file for buffered reads, used to `sendfile` segment ranges to sockets. It is a
/// separate descriptor from the O_DIRECT one because `sendfile` goes through the page
/// cache, which the kernel keeps coherent with direct writes.
pub fn open_reader(path: &Path) -> Result<std::fs::File> {
    std::fs::File::open(path).map_err(|e| EngineError::io("open for reading", path, e))
}

/// `path` made absolute. glommio 0.9's `Directory::open` passes dirfd -1 to `openat`
/// without resolving a relative path (its file opens do resolve them), so a relative data
/// directory fails with EBADF; we resolve every path we hand to glommio's directory and
/// unlink calls here.
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// `fsync`s a directory, making creations, renames and deletions in it durable.
pub async fn sync_dir(dir: &Path) -> Result<()> {
    let dir = &absolute(dir);
    let d = glommio::io::Directory::open(dir)
        .await
        .map_err(|e| EngineError::glommio("open directory", dir, e))?;
    d.sync()
        .await
        .map_err(|e| EngineError::glommio("fsync directory", dir, e))?;
    d.close()
        .await
        .map_err(|e| EngineError::glommio("close directory", dir, e))
}

/// Writes `bytes` at `position` (aligned) through O_DIRECT, padding with zeros to the
/// alignment, and fails on a short write.
pub async fn write_padded(file: &DmaFile, path: &Path, position: u64, bytes: &[u8]) -> Result<()> {
    assert_eq!(
        position % DIRECT_IO_ALIGNMENT,
        0,
        "unaligned O_DIRECT write"
    );
    let padded = align_up(bytes.len() as u64) as usize;
    if padded == 0 {
        return Ok(());
    }
    let mut buffer = file.alloc_dma_buffer(padded);
    let out = buffer.as_bytes_mut();
    out[..bytes.len()].copy_from_slice(bytes);
    out[bytes.len()..].fill(0);
    let written = file
        .write_at(buffer, position)
        .await
        .map_err(|e| EngineError::glommio("write", path, e))?;
    if written != padded {
        return Err(EngineError::io(
            "short write",
            path,
            std::io::ErrorKind::WriteZero.into(),
        ));
    }
    Ok(())
}

/// Replaces `dir/name` atomically with `bytes` (see the module doc).
pub async fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    probe_device(dir).await?;
    let tmp = dir.join(format!("{name}.tmp"));
    let dest = dir.join(name);
    // Read as well as write: glommio probes each new DMA file with a read to decide on
    // iopoll, and logs an ERROR (EBADF) for a write-only descriptor.
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .dma_open(&tmp)
        .await
        .map_err(|e| EngineError::glommio("create", &tmp, e))?;
    write_padded(&file, &tmp, 0, bytes).await?;
    file.truncate(bytes.len() as u64)
        .await
        .map_err(|e| EngineError::glommio("truncate", &tmp, e))?;
    file.fdatasync()
        .await
        .map_err(|e| EngineError::glommio("fdatasync", &tmp, e))?;
    file.close()
        .await
        .map_err(|e| EngineError::glommio("close", &tmp, e))?;
    std::fs::rename(&tmp, &dest).map_err(|e| EngineError::io("rename", &dest, e))?;
    sync_dir(dir).await
}

/// Reads a whole small file; `None` if it does not exist. Files over
/// `METADATA_FILE_BYTES_MAX` are refused as corrupt rather than read into memory.
pub async fn read_small(path: &Path) -> Result<Option<Vec<u8>>> {
    if let Some(dir) = path.parent().filter(|d| d.is_dir()) {
        probe_device(dir).await?;
    }
    let file = match DmaFile::open(path).await {
        Ok(f) => f,
        Err(e) => {
            let io: std::io::Error = e.into();
            if io.kind() == std::io::ErrorKind::NotFound {
                return Ok(None);
            }
            return Err(EngineError::io("open", path, io));
        }
    };
    let size = file
        .file_size()
        .await
        .map_err(|e| EngineError::glommio("stat", path, e))?;
    if size > METADATA_FILE_BYTES_MAX as u64 * 64 {
        return Err(EngineError::CorruptSegment {
            path: path.into(),
            position: 0,
            reason: format!("{size} bytes is larger than any engine metadata or index file"),
        });
    }
    let bytes = if size == 0 {
        Vec::new()
    } else {
        let read = file
            .read_at(0, size as usize)
            .await
            .map_err(|e| EngineError::glommio("read", path, e))?;
        read.to_vec()
    };
    file.close()
        .await
        .map_err(|e| EngineError::glommio("close", path, e))?;
    Ok(Some(bytes))
}

/// Reads `len` bytes at `position` of a DMA file (any alignment).
pub async fn read_at(file: &DmaFile, path: &Path, position: u64, len: usize) -> Result<Vec<u8>> {
    let read = file
        .read_at(position, len)
        .await
        .map_err(|e| EngineError::glommio("read", path, e))?;
    Ok(read.to_vec())
}

/// Deletes a file; a file already gone is not an error.
pub async fn remove(path: &Path) -> Result<()> {
    match glommio::io::remove(absolute(path)).await {
        Ok(()) => Ok(()),
        Err(e) => {
            let io: std::io::Error = e.into();
            if io.kind() == std::io::ErrorKind::NotFound {
                Ok(())
            } else {
                Err(EngineError::io("remove", path, io))
            }
        }
    }
}

/// Path helper: `dir/<20-digit base offset>.<ext>`, Kafka's segment file naming.
pub fn segment_path(dir: &Path, base_offset: i64, ext: &str) -> PathBuf {
    dir.join(format!("{base_offset:020}.{ext}"))
}

/// How long a `sendfile` that found the socket full waits before trying again. Only a
/// consumer slower than the broker ever waits; it is backpressure, not polling for data.
pub const SOCKET_FULL_RETRY: std::time::Duration = std::time::Duration::from_micros(500);

/// Sends `len` bytes of `file` from `position` to the socket with `sendfile`: no copy
/// through user space. glommio keeps its sockets blocking and sets O_NONBLOCK only around
/// its own synchronous attempts; this does the same, so no io_uring operation sees it.
pub async fn send_file(
    socket: std::os::fd::RawFd,
    file: &std::fs::File,
    mut position: u64,
    len: u64,
) -> std::io::Result<()> {
    let mut left = len;
    while left > 0 {
        let mut offset = position as libc::off_t;
        let chunk = left.min(1 << 30) as usize;
        // SAFETY: fcntl and sendfile on descriptors we own, with a local offset.
        let (sent, error) = unsafe {
            let flags = libc::fcntl(socket, libc::F_GETFL);
            libc::fcntl(socket, libc::F_SETFL, flags | libc::O_NONBLOCK);
            let sent = libc::sendfile(
                socket,
                std::os::fd::AsRawFd::as_raw_fd(file),
                &mut offset,
                chunk,
            );
            let error = std::io::Error::last_os_error();
            libc::fcntl(socket, libc::F_SETFL, flags);
            (sent, error)
        };
        match sent {
            n if n > 0 => {
                position += n as u64;
                left -= n as u64;
            }
            0 => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "segment file ended early",
                ))
            }
            _ => match error.kind() {
                std::io::ErrorKind::WouldBlock => glommio::timer::sleep(SOCKET_FULL_RETRY).await,
                std::io::ErrorKind::Interrupted => {}
                _ => return Err(error),
            },
        }
    }
    Ok(())
}
