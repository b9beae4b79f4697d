//! Process-level tuning.

/// Keeps activation-sized buffers in the heap and the heap's freed memory in the process.
///
/// glibc hands every buffer above the mmap threshold to mmap/munmap, and it returns the free top
/// of the heap to the kernel once it exceeds the trim threshold (128 KiB by default). Either way
/// the next forward pass faults the same memory back in page by page, and the kernel zeroes each
/// page first: on flan-t5-base's forward + backward (a ~120 MB trace freed after every example)
/// that was a fifth of the run time. So buffers up to 32 MiB (glibc's ceiling for the threshold)
/// stay in the heap, and trimming is off: the process keeps its peak, which it reaches anyway on
/// the next example, so the peak resident size does not change.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator thresholds; called before any threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        // -1 disables trimming (mallopt(3)).
        libc::mallopt(libc::M_TRIM_THRESHOLD, -1);
    }
}
