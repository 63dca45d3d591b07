//! A global allocator that survives decoders which pre-allocate from untrusted counts.
//!
//! The `kafka-protocol` crate (0.15) decodes an array by reading its element count from
//! the wire and calling `Vec::with_capacity(count)` before decoding a single element. A
//! request of a few bytes claiming 2^31 elements therefore asks for a multi-gigabyte
//! allocation; the kernel refuses it, and Rust aborts the process on allocation failure.
//! (Measured: a 5-byte Metadata v0 body claiming 2^31 topics aborts with "memory
//! allocation of 154618822584 bytes failed". Upstream fixes are proposed, not released.)
//!
//! `ReservingAllocator` serves every allocation of at least `RESERVED_ALLOCATION_BYTES_MIN`
//! with an anonymous `mmap(MAP_NORESERVE)`: address space is reserved, and memory is only
//! committed for the pages actually written. The decoder then fails on the real bytes
//! (each element needs at least one byte of a frame capped at `REQUEST_FRAME_BYTES_MAX`),
//! the vector is dropped and the mapping unmapped, having committed at most what the
//! frame could fill. Everything smaller goes to the system allocator unchanged.
//!
//! Binaries install it with `#[global_allocator]` (the `spate` binary and the network
//! tests do). Under `vm.overcommit_memory = 2` the kernel ignores MAP_NORESERVE and the
//! guard cannot help; `serve` warns about that at start.

use std::alloc::{GlobalAlloc, Layout, System};

use crate::limits::RESERVED_ALLOCATION_BYTES_MIN;

/// See the module documentation.
#[derive(Debug, Default, Clone, Copy)]
pub struct ReservingAllocator;

const PAGE_BYTES: usize = 4096;

fn reserved(layout: &Layout) -> bool {
    layout.size() >= RESERVED_ALLOCATION_BYTES_MIN && layout.align() <= PAGE_BYTES
}

fn map(size: usize) -> *mut u8 {
    // SAFETY: an anonymous private mapping with no address hint; no memory is aliased.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        std::ptr::null_mut()
    } else {
        p.cast()
    }
}

// SAFETY: every pointer handed out is either from `System` (and returned to it) or from
// `mmap` of at least the layout's size with page alignment (and returned with `munmap`);
// which one is decided by the layout alone, identically on allocation and release.
unsafe impl GlobalAlloc for ReservingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if reserved(&layout) {
            return map(layout.size());
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if reserved(&layout) {
            // Anonymous mappings are zero-filled.
            return map(layout.size());
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if reserved(&layout) {
            // SAFETY: `ptr` came from `map(layout.size())`.
            unsafe { libc::munmap(ptr.cast(), layout.size()) };
            return;
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees new_size and align form a valid layout.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if !reserved(&layout) && !reserved(&new_layout) {
            // SAFETY: forwarded with the caller's guarantees.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // SAFETY: allocate, copy the common prefix, release: valid for any pair of kinds.
        unsafe {
            let new = self.alloc(new_layout);
            if !new.is_null() {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            new
        }
    }
}
