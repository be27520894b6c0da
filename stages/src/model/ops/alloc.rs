//! Keeps glibc from handing freed activation memory back to the kernel during the pass.
//!
//! Each micro-batch allocates and frees a few hundred MiB of activations. glibc serves
//! blocks above its mmap threshold with fresh mappings and trims the heap top as soon as
//! it is free, so every micro-batch pays again for page faults and zeroing of fresh
//! pages (measured: ~9% of the pass in the kernel). [`RetainHeap`] raises both thresholds
//! for its lifetime, so freed blocks are reused, then trims once and restores glibc's
//! default thresholds (128 KiB) when dropped. No-op on other platforms. The engine's
//! context (`c2i run`, `sweep`, the workers) holds one for its whole life: restoring the
//! thresholds explicitly also switches off glibc's dynamic mmap threshold, after which
//! every large activation of every evaluation was a fresh mapping (measured on the cold
//! quickstart: 56 million minor faults and system time 24% of user time without it).

use std::sync::atomic::{AtomicUsize, Ordering};

/// While alive, freed heap memory stays in the process for reuse.
pub struct RetainHeap(());

/// Live guards: the first sets the thresholds, the last restores them.
static LIVE: AtomicUsize = AtomicUsize::new(0);

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod sys {
    use std::os::raw::c_int;
    extern "C" {
        pub fn mallopt(param: c_int, value: c_int) -> c_int;
        pub fn malloc_trim(pad: usize) -> c_int;
    }
    pub const M_TRIM_THRESHOLD: c_int = -1;
    pub const M_MMAP_THRESHOLD: c_int = -3;
}

impl RetainHeap {
    #[allow(clippy::new_without_default)]
    pub fn new() -> RetainHeap {
        if LIVE.fetch_add(1, Ordering::SeqCst) > 0 {
            return RetainHeap(());
        }
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: plain libc calls that only change allocator tuning.
        unsafe {
            // 32 MiB is glibc's largest mmap threshold on 64-bit targets.
            sys::mallopt(sys::M_MMAP_THRESHOLD, 32 << 20);
            sys::mallopt(sys::M_TRIM_THRESHOLD, i32::MAX);
        }
        RetainHeap(())
    }
}

impl Drop for RetainHeap {
    fn drop(&mut self) {
        if LIVE.fetch_sub(1, Ordering::SeqCst) > 1 {
            return;
        }
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: as above.
        unsafe {
            sys::mallopt(sys::M_MMAP_THRESHOLD, 128 << 10);
            sys::mallopt(sys::M_TRIM_THRESHOLD, 128 << 10);
            sys::malloc_trim(0);
        }
    }
}
