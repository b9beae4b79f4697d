//! Process-level tuning.

/// glibc hands every multi-megabyte buffer to mmap/munmap, and the page faults that follow cost
/// about a fifth of the run time on activation-sized buffers. Keep such buffers in the heap.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator thresholds; called before any threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 << 20);
    }
}
