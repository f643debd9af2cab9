//! Process-wide tuning of the C allocator for tensor workloads.
//!
//! candle allocates a fresh buffer for nearly every op's output and frees it
//! soon after. With glibc's defaults, buffers above the dynamic mmap threshold
//! come from `mmap` and go back with `munmap`, and freed memory at the top of
//! the heap is trimmed: each new buffer then costs a page fault and a zeroed page
//! per 4 KiB, and each `munmap` a TLB shoot-down on the other cores. A profile of
//! a LoRA training step on CLIP ViT-B/16 spent about a quarter of its time in the
//! kernel doing this (`docs/benchmarks.md`). [`keep_freed_memory`] makes glibc
//! serve large buffers from its heap and keep freed memory for reuse, so the
//! process stays at its high-water mark instead of returning and re-faulting it:
//! the peak resident memory is unchanged, memory is not handed back to the
//! system after a peak.

/// Largest mmap threshold glibc accepts from `mallopt` on 64-bit targets
/// (half its 64 MiB heap size); buffers above it still come from `mmap`.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD_BYTES: i32 = 32 << 20;

/// Tells glibc to serve buffers of up to 32 MiB from its heap and never to trim
/// freed memory. Returns whether the allocator took the settings (always false
/// off glibc, where nothing is changed). Call once at the start of a program
/// that runs models; it is safe to call again.
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes the allocator's parameters; glibc takes
        // its own lock, so concurrent allocations stay valid.
        unsafe {
            let mmap = libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES);
            let trim = libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
            mmap == 1 && trim == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    #[test]
    fn glibc_takes_the_settings() {
        let taken = super::keep_freed_memory();
        if cfg!(all(target_os = "linux", target_env = "gnu")) {
            assert!(taken, "glibc refused the mallopt settings");
            // Allocation still works after the change, large buffers included.
            let big = vec![1u8; 48 << 20];
            assert_eq!(big.iter().map(|&b| b as usize).sum::<usize>(), 48 << 20);
        } else {
            assert!(!taken);
        }
    }
}
