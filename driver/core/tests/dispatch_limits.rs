//! The dispatcher's memory bounds and SET_MEMLIMIT (defect 7), and the IOCTL table's
//! completeness: every refusal is HAXM's status and leaves the observable state unchanged.

use rhax_api::ext::EXT_IOCTLS;
use rhax_api::ioctl::{self, IoctlDef, IOCTLS};
use rhax_api::{AllocRamInfo, Platform as Codes, Pod, RamblockInfo, SetMemlimit, SetRamInfo2};
use rhax_core::dispatch::{errno, nt, DispatchError, ErrorKind, Handle, Hypervisor, SoftCpuRoots};
use rhax_core::memory::limits::{Limit, MAX_RAM_BLOCKS};
use rhax_core::memory::MemoryError;
use rhax_core::platform::HeapPlatform;
use rhax_core::vmx::soft::msrs_from_tsv;

const TSV: &str = include_str!("data/bochs-vmx-msrs.tsv");
const MB: u64 = 1 << 20;

type Hv = Hypervisor<HeapPlatform, SoftCpuRoots>;

fn hv(codes: Codes) -> Hv {
    let msrs = msrs_from_tsv(TSV, "corei7_skylake_x").expect("model");
    rhax_core::dispatch::soft_hypervisor(HeapPlatform::new(), msrs, codes).expect("negotiation")
}

fn call(h: &Hv, handle: Handle, def: &IoctlDef, input: &[u8]) -> Result<usize, DispatchError> {
    let code = def.code(h.codes()).expect("defined on this platform");
    h.dispatch(handle, code, input, &mut [])
}

fn new_vm(h: &Hv, sys: Handle) -> Handle {
    let mut id = [0u8; 4];
    let code = ioctl::HAX_IOCTL_CREATE_VM.code(h.codes()).unwrap();
    h.dispatch(sys, code, &[], &mut id).expect("CREATE_VM");
    h.open_vm(u32::from_le_bytes(id)).expect("open")
}

fn alloc_ram(h: &Hv, vm: Handle, va: u64, size: u64) -> Result<usize, DispatchError> {
    let info = AllocRamInfo {
        size: size as u32,
        pad: 0,
        va,
    };
    call(h, vm, &ioctl::HAX_VM_IOCTL_ALLOC_RAM, info.as_bytes())
}

fn add_ramblock(h: &Hv, vm: Handle, va: u64, size: u64) -> Result<usize, DispatchError> {
    let info = RamblockInfo {
        start_va: va,
        size,
        reserved: 0,
    };
    call(h, vm, &ioctl::HAX_VM_IOCTL_ADD_RAMBLOCK, info.as_bytes())
}

fn set_ram2(
    h: &Hv,
    vm: Handle,
    gpa: u64,
    size: u64,
    va: u64,
    flags: u32,
) -> Result<usize, DispatchError> {
    let info = SetRamInfo2 {
        pa_start: gpa,
        size,
        va,
        flags,
        reserved1: 0,
        reserved2: 0,
    };
    call(h, vm, &ioctl::HAX_VM_IOCTL_SET_RAM2, info.as_bytes())
}

/// Asserts a refusal with `kind`, HAXM's statuses, and no observable change.
#[track_caller]
fn refused(h: &Hv, r: Result<usize, DispatchError>, kind: ErrorKind, status: (u32, i32)) {
    let before = h.snapshot();
    let e = r.expect_err("must be refused");
    assert_eq!(e.kind, kind, "{e}");
    assert_eq!((e.nt_status(), e.errno()), status, "{e}");
    assert_eq!(h.snapshot(), before);
}

/// SET_MEMLIMIT is enforced on the RAM of all VMs together (as HAXM before 6.2.0): exactly the
/// limit registers, one page more is refused (`-EINVAL`, Windows `STATUS_UNSUCCESSFUL` for
/// ALLOC_RAM/ADD_RAMBLOCK and `STATUS_INVALID_PARAMETER` for SET_RAM2's implicit block) with
/// nothing changed; closing a VM gives its RAM back; a disabled limit limits nothing.
#[test]
fn set_memlimit_is_enforced_on_all_vms_together() {
    for codes in [Codes::Windows, Codes::Linux] {
        let h = hv(codes);
        let sys = h.open_system();
        let lim = SetMemlimit {
            enable_memlimit: 1,
            pad: [0; 7],
            memory_limit: 8,
        };
        call(&h, sys, &ioctl::HAX_IOCTL_SET_MEMLIMIT, lim.as_bytes()).unwrap();
        assert_eq!(h.ram_quota().limit(), Some(8 * MB));
        let a = new_vm(&h, sys);
        let b = new_vm(&h, sys);
        assert_eq!(alloc_ram(&h, a, 0x1000_0000, 4 * MB), Ok(0));
        assert_eq!(add_ramblock(&h, b, 0x1000_0000, 3 * MB), Ok(0));
        assert_eq!(set_ram2(&h, b, 0, MB, 0x2000_0000, 0x40), Ok(0)); // exactly 8 MB
        assert_eq!(h.ram_quota().used(), 8 * MB);
        let over = ErrorKind::Memory(MemoryError::QuotaExceeded { bytes: 4096 });
        refused(
            &h,
            alloc_ram(&h, a, 0x3000_0000, 4096),
            over,
            (nt::STATUS_UNSUCCESSFUL, errno::EINVAL),
        );
        refused(
            &h,
            add_ramblock(&h, b, 0x3000_0000, 4096),
            over,
            (nt::STATUS_UNSUCCESSFUL, errno::EINVAL),
        );
        refused(
            &h,
            set_ram2(&h, a, 0, 4096, 0x3000_0000, 0x40),
            over,
            (nt::STATUS_INVALID_PARAMETER, errno::EINVAL),
        );
        // Closing VM b (its handle was the last reference) returns its 4 MB.
        h.close(b).unwrap();
        assert_eq!(h.ram_quota().used(), 4 * MB);
        assert_eq!(alloc_ram(&h, a, 0x3000_0000, 4 * MB), Ok(0));
        h.close(a).unwrap();
        assert_eq!(h.ram_quota().used(), 0);
        // Disabled: no limit.
        let off = SetMemlimit {
            enable_memlimit: 0,
            ..lim
        };
        call(&h, sys, &ioctl::HAX_IOCTL_SET_MEMLIMIT, off.as_bytes()).unwrap();
        let c = new_vm(&h, sys);
        assert_eq!(add_ramblock(&h, c, 0x1_0000_0000, 1 << 40), Ok(0));
    }
}

/// The per-VM bound on RAM blocks through the dispatcher: exactly MAX_RAM_BLOCKS register; one
/// more is `-ENOMEM` (what HAXM answers when its kernel allocation fails), Windows
/// `STATUS_UNSUCCESSFUL`, for ADD_RAMBLOCK and for SET_RAM2's implicit block alike.
#[test]
fn per_vm_bounds_are_enomem_through_the_dispatcher() {
    for codes in [Codes::Windows, Codes::Linux] {
        let h = hv(codes);
        let sys = h.open_system();
        let vm = new_vm(&h, sys);
        for i in 0..MAX_RAM_BLOCKS as u64 {
            assert_eq!(add_ramblock(&h, vm, 0x1000_0000 + i * 0x2000, 4096), Ok(0));
        }
        let kind = ErrorKind::Memory(MemoryError::LimitReached(Limit::RamBlocks));
        let enomem = (nt::STATUS_UNSUCCESSFUL, errno::ENOMEM);
        refused(&h, add_ramblock(&h, vm, 0x9000_0000, 4096), kind, enomem);
        refused(
            &h,
            set_ram2(&h, vm, 0, 4096, 0x9000_0000, 0x40),
            kind,
            enomem,
        );
    }
}

/// The table serves every IOCTL `rhax-api` defines, once, on the device the definition names.
#[test]
fn the_ioctl_table_serves_every_definition_once_on_its_device() {
    let served: Vec<(&IoctlDef, rhax_api::Scope)> = Hv::served_ioctls().collect();
    for def in IOCTLS.iter().chain(EXT_IOCTLS) {
        let rows: Vec<_> = served.iter().filter(|(d, _)| *d == def).collect();
        assert_eq!(rows.len(), 1, "{} served {} times", def.name, rows.len());
        assert_eq!(rows[0].1, def.scope, "{} on the wrong device", def.name);
    }
    assert_eq!(
        served.len(),
        IOCTLS.len() + EXT_IOCTLS.len(),
        "no row without a definition"
    );
}
