//! The parent's use of glibc's allocator: one arena, and free pages given back when a large
//! policy goes.
//!
//! Runs in the parent.

/// Returns the free memory of every malloc arena to the system. A parse of a large file runs on
/// the loader's thread, whose arena glibc keeps at its peak after the parse's values are freed
/// (a 100,000-rule reload left the parent at 55 MB, from 5 MB, with the small files back).
pub(super) fn give_back() {
    // SAFETY: malloc_trim only reorganises the allocator's own free lists under its locks; it
    // takes no pointer from us and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Keeps the parent's allocations in one malloc arena. The parent runs one thread besides the
/// loop, the loader, so it gains nothing from glibc's per-thread arenas, and a thread arena's
/// freed pages are not given back: a 100,000-rule reload left 31 MB there with the small files
/// back (one arena: 8 MB). Call before the loader first starts.
pub(super) fn one_arena() {
    // SAFETY: mallopt only sets an allocator parameter; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}
