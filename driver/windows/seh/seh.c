/*
 * rhax.sys SEH shim: the two ntoskrnl calls that report failure by RAISING an exception
 * (structured exception handling) instead of returning a status, wrapped in __try/__except so
 * that a bad user address becomes an NTSTATUS the Rust side can return. Rust cannot catch a
 * Windows SEH exception (it would unwind through Rust frames compiled with panic=abort).
 *
 * The functions are passed in as pointers, so this object imports nothing itself: the imports
 * stay in the Rust declarations (src/nt/mm.rs). Compiled by build.rs with clang for
 * x86_64-pc-windows-msvc, general-purpose registers only (no SSE in kernel code), and linked
 * into rhax.sys. The __except clause needs __C_specific_handler, which ntoskrnl.exe exports
 * (src/seh.rs imports it).
 *
 * UNVERIFIED on real Windows: built and linked only; Wine stubs both callees.
 */

typedef long NTSTATUS;
typedef void (*probe_and_lock_fn)(void *mdl, char access_mode, int operation);
typedef void *(*map_locked_pages_fn)(void *mdl, char access_mode, int cache_type,
                                     void *requested_address, unsigned long bug_check_on_failure,
                                     unsigned long priority);

/* MmProbeAndLockPages (wdm.h): raises STATUS_ACCESS_VIOLATION (or another status) when the
 * range is not accessible for the operation, or when pages cannot be locked. Returns 0 on
 * success, else the exception code. */
NTSTATUS rhax_seh_probe_and_lock(probe_and_lock_fn probe, void *mdl, char access_mode,
                                 int operation)
{
    __try {
        probe(mdl, access_mode, operation);
    } __except (1 /* EXCEPTION_EXECUTE_HANDLER */) {
        return (NTSTATUS)_exception_code();
    }
    return 0;
}

/* MmMapLockedPagesSpecifyCache (wdm.h) with AccessMode == UserMode: raises on failure
 * (BugCheckOnFailure is ignored for user mode). Stores the mapped address in *out (NULL on
 * failure); returns 0 on success, else the exception code. */
NTSTATUS rhax_seh_map_locked_pages(map_locked_pages_fn map, void *mdl, char access_mode,
                                   int cache_type, unsigned long priority, void **out)
{
    void *va = 0;
    __try {
        va = map(mdl, access_mode, cache_type, 0, 0, priority);
    } __except (1 /* EXCEPTION_EXECUTE_HANDLER */) {
        *out = 0;
        return (NTSTATUS)_exception_code();
    }
    *out = va;
    return 0;
}
