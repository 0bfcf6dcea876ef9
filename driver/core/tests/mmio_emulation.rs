//! The general MMIO path of the HAXM vCPU (issue 11) against the software VMX: read-modify-
//! write instructions (a read exit, then the write exit), REP string forms split per element
//! with RCX/RSI/RDI/RIP at every exit, MOVS between MMIO and RAM at passive level, a MOVS
//! between two MMIO addresses as one move exit, SSE loads into the saved FPU image, faults
//! the guest gets, and the defined panic of an instruction the emulator does not carry out.

mod common;
use common::*;
use rhax_api::vcpu::{SegmentDesc, VcpuState};

/// Real mode at CS:IP 0:0x1000 with `code` there; `f` adjusts the registers.
fn real_mode(t: &mut T, code: &[u8], f: impl FnOnce(&mut VcpuState)) {
    t.mem.0.borrow_mut()[0x1000..0x1000 + code.len()].copy_from_slice(code);
    let mut s = t.vcpu.get_regs(&mut t.root).unwrap();
    s.cs = SegmentDesc::new(0, 0, 0xffff, 0x9b);
    for seg in [&mut s.ds, &mut s.es, &mut s.ss] {
        *seg = SegmentDesc::new(0, 0, 0xffff, 0x93);
    }
    s.rip = 0x1000;
    f(&mut s);
    t.vcpu.set_regs(&mut t.root, &s).unwrap();
}

/// An EPT violation at `gpa` (the hook plays the CPU's access to MMIO).
fn violation(gpa: u64) -> Step {
    Box::new(move |c| {
        c.write(VmcsField::GuestPhysicalAddress, gpa);
        c.exit(48, 2, 0);
    })
}

fn hlt() -> Step {
    Box::new(|c| c.exit(12, 0, 1))
}

fn mmio(t: &mut T) -> (u64, u8, u8, u64) {
    let m = FastMmio::read_from_prefix(t.vcpu.io_buffer_mut()).unwrap();
    (m.gpa, m.size, m.direction, m.value)
}

fn mmio3(t: &mut T) -> [u64; 3] {
    let (g, s, d, _) = mmio(t);
    [g, u64::from(s), u64::from(d)]
}

fn answer(t: &mut T, value: u64) {
    let mut m = FastMmio::read_from_prefix(t.vcpu.io_buffer_mut()).unwrap();
    m.value = value;
    t.vcpu.io_buffer_mut()[..56].copy_from_slice(m.as_bytes());
}

#[test]
fn add_to_mmio_is_a_read_exit_then_a_write_exit_with_the_flags_of_the_sum() {
    let mut t = setup();
    real_mode(&mut t, &[0x01, 0x07], |s| {
        // add [bx], ax
        s.regs[reg::RBX] = 0x40;
        s.regs[reg::RAX] = 1;
    });
    t.hook(script(vec![violation(0xfee0_0040), hlt()]));
    assert_eq!(t.run(), Ok(ExitStatus::FastMmio));
    assert_eq!(mmio3(&mut t), [0xfee0_0040, 2, 0], "a 2-byte read");
    assert_eq!(t.rip(), 0x1000, "nothing changed before the data is there");
    answer(&mut t, 0xfffe);
    assert_eq!(t.run(), Ok(ExitStatus::FastMmio));
    assert_eq!(mmio(&mut t), (0xfee0_0040, 2, 1, 0xffff));
    let s = t.vcpu.get_regs(&mut t.root).unwrap();
    assert_eq!(s.rip, 0x1002);
    // 0xfffe + 1 = 0xffff: SF, PF (0xff has eight bits set), no CF/ZF/OF/AF.
    assert_eq!(s.rflags & 0x8d5, 0x84);
    assert_eq!(t.run(), Ok(ExitStatus::Hlt), "the guest goes on");
}

#[test]
fn cmp_with_mmio_reads_once_and_writes_nothing() {
    let mut t = setup();
    real_mode(&mut t, &[0x66, 0x39, 0x07], |s| {
        // cmp [bx], eax
        s.regs[reg::RAX] = 5;
    });
    t.hook(script(vec![violation(0xfee0_0000), hlt()]));
    assert_eq!(t.run(), Ok(ExitStatus::FastMmio));
    assert_eq!(mmio(&mut t).1, 4);
    answer(&mut t, 5);
    assert_eq!(t.run(), Ok(ExitStatus::Hlt));
    let s = t.vcpu.get_regs(&mut t.root).unwrap();
    assert_eq!(
        (s.rip, s.rflags & 0x40),
        (0x1004, 0x40),
        "ZF: equal (RIP past the HLT)"
    );
}

#[test]
fn rep_stosw_to_mmio_exits_per_element_with_the_registers_of_each_step() {
    let mut t = setup();
    real_mode(&mut t, &[0xf3, 0xab], |s| {
        // rep stosw
        s.regs[reg::RAX] = 0x0720;
        s.regs[reg::RCX] = 3;
        s.regs[reg::RDI] = 0x10;
    });
    t.hook(script(vec![
        violation(0xfee0_0010),
        violation(0xfee0_0012),
        violation(0xfee0_0014),
        hlt(),
    ]));
    for (i, di) in [(0u64, 0x10u64), (1, 0x12), (2, 0x14)] {
        assert_eq!(t.run(), Ok(ExitStatus::FastMmio));
        assert_eq!(mmio(&mut t), (0xfee0_0000 + di, 2, 1, 0x0720));
        let s = t.vcpu.get_regs(&mut t.root).unwrap();
        assert_eq!(s.regs[reg::RCX], 2 - i);
        assert_eq!(s.regs[reg::RDI], di + 2);
        let rip = if i == 2 { 0x1002 } else { 0x1000 };
        assert_eq!(s.rip, rip, "RIP moves after the last element only");
    }
    assert_eq!(t.run(), Ok(ExitStatus::Hlt));
}

#[test]
fn movsd_from_mmio_to_ram_goes_through_guest_memory() {
    let mut t = setup();
    t.flat32(&[0xa5], |s| {
        // movsd
        s.regs[reg::RSI] = 0x20_0000;
        s.regs[reg::RDI] = 0x500;
    });
    t.hook(script(vec![violation(0x20_0000), hlt()]));
    assert_eq!(t.run(), Ok(ExitStatus::FastMmio));
    assert_eq!(mmio3(&mut t), [0x20_0000, 4, 0]);
    answer(&mut t, 0xdead_beef);
    assert_eq!(t.run(), Ok(ExitStatus::Hlt));
    assert_eq!(
        &t.mem.0.borrow()[0x500..0x504],
        &0xdead_beefu32.to_le_bytes()
    );
    let s = t.vcpu.get_regs(&mut t.root).unwrap();
    assert_eq!(
        (s.regs[reg::RSI], s.regs[reg::RDI], s.rip),
        (0x20_0004, 0x504, 0x1002) // RIP past the MOVSD and the HLT
    );
}

#[test]
fn movsw_from_ram_to_mmio_is_one_write_exit() {
    let mut t = setup();
    t.mem.0.borrow_mut()[0x600..0x602].copy_from_slice(&[0x34, 0x12]);
    t.flat32(&[0x66, 0xa5], |s| {
        s.regs[reg::RSI] = 0x600;
        s.regs[reg::RDI] = 0x30_0010;
        s.rflags = 2 | (1 << 10); // DF: the registers go down
    });
    t.hook(script(vec![violation(0x30_0010), hlt()]));
    assert_eq!(t.run(), Ok(ExitStatus::FastMmio));
    assert_eq!(mmio(&mut t), (0x30_0010, 2, 1, 0x1234));
    let s = t.vcpu.get_regs(&mut t.root).unwrap();
    assert_eq!((s.regs[reg::RSI], s.regs[reg::RDI]), (0x5fe, 0x30_000e));
    assert_eq!(t.run(), Ok(ExitStatus::Hlt));
}

#[test]
fn movsb_between_two_mmio_addresses_is_one_move_exit() {
    let mut t = setup();
    t.flat32(&[0xa4], |s| {
        s.regs[reg::RSI] = 0x20_0001;
        s.regs[reg::RDI] = 0x30_0002;
    });
    t.hook(script(vec![violation(0x20_0001), hlt()]));
    assert_eq!(t.run(), Ok(ExitStatus::FastMmio));
    assert_eq!(
        mmio(&mut t),
        (0x20_0001, 1, 2, 0x30_0002),
        "direction 2, gpa2 in value"
    );
    assert_eq!(t.run(), Ok(ExitStatus::Hlt));
    let s = t.vcpu.get_regs(&mut t.root).unwrap();
    assert_eq!(
        (s.regs[reg::RSI], s.regs[reg::RDI], s.rip),
        (0x20_0002, 0x30_0003, 0x1002) // RIP past the MOVSB and the HLT
    );
}

#[test]
fn movdqu_load_from_mmio_is_two_8_byte_reads_into_the_saved_xmm() {
    let mut t = setup();
    t.flat32(&[0xf3, 0x0f, 0x6f, 0x0b], |s| {
        // movdqu xmm1, [ebx]
        s.regs[reg::RBX] = 0x20_0100;
        s.cr4 = 0x600; // OSFXSR | OSXMMEXCPT
    });
    t.hook(script(vec![violation(0x20_0100), hlt()]));
    assert_eq!(t.run(), Ok(ExitStatus::FastMmio));
    assert_eq!(mmio3(&mut t), [0x20_0100, 8, 0]);
    answer(&mut t, 0x0706_0504_0302_0100);
    assert_eq!(t.run(), Ok(ExitStatus::FastMmio));
    assert_eq!(mmio(&mut t).0, 0x20_0108, "the second half");
    answer(&mut t, 0x0f0e_0d0c_0b0a_0908);
    assert_eq!(t.run(), Ok(ExitStatus::Hlt));
    let fpu = t.vcpu.get_fpu();
    let want: Vec<u8> = (0..16).collect();
    assert_eq!(&fpu.mmx_1[1][..], &want[..]);
    assert_eq!(t.rip(), 0x1005, "past the instruction and the HLT");
}

#[test]
fn an_instruction_the_emulator_does_not_know_panics_the_vcpu_with_its_bytes() {
    let mut t = setup();
    real_mode(&mut t, &[0xd9, 0x07], |_| {}); // fld dword [bx]
    t.hook(script(vec![violation(0xfee0_0000)]));
    assert_eq!(t.run(), Ok(ExitStatus::StateChange));
    match t.vcpu.panic_reason() {
        Some(PanicReason::Unemulated(u)) => {
            assert_eq!(u.gpa, 0xfee0_0000);
            assert_eq!(&u.bytes[..2], &[0xd9, 0x07]);
        }
        other => panic!("panic reason {other:?}"),
    }
    // The exit carries the bytes for user space too.
    let r = rhax_api::ext::RhaxUnemulated::read_from_prefix(t.vcpu.io_buffer_mut()).unwrap();
    assert_eq!(r.magic, rhax_api::ext::RHAX_UNEMULATED_MAGIC);
    assert_eq!((r.gpa, &r.bytes[..2]), (0xfee0_0000, &[0xd9u8, 0x07][..]));
    assert!(r.len >= 2);
    assert_eq!(t.run(), Ok(ExitStatus::StateChange), "sticky");
}

#[test]
fn lock_on_a_register_form_is_ud_in_the_guest() {
    let mut t = setup();
    // lock mov [bx], ax: LOCK is #UD on MOV (SDM Vol. 2A §2.1.1).
    real_mode(&mut t, &[0xf0, 0x89, 0x07], |_| {});
    t.hook(script(vec![
        violation(0xfee0_0000),
        Box::new(|c| {
            let info = c.read(VmcsField::VmEntryInterruptionInformation);
            assert_eq!(info & 0x8000_07ff, 0x8000_0306, "#UD injected");
            c.exit(12, 0, 1);
        }),
    ]));
    assert_eq!(t.run(), Ok(ExitStatus::Hlt));
}

#[test]
fn an_sse_move_without_cr4_osfxsr_is_ud_and_with_cr0_ts_nm() {
    for (cr0, cr4, vector) in [(0x11u64, 0u64, 6u32), (0x19, 0x600, 7)] {
        let mut t = setup();
        t.flat32(&[0xf3, 0x0f, 0x6f, 0x0b], |s| {
            s.regs[reg::RBX] = 0x20_0100;
            s.cr0 = cr0;
            s.cr4 = cr4;
        });
        t.hook(script(vec![
            violation(0x20_0100),
            Box::new(move |c| {
                let info = c.read(VmcsField::VmEntryInterruptionInformation);
                assert_eq!(info & 0x8000_07ff, 0x8000_0300 | u64::from(vector));
                c.exit(12, 0, 1);
            }),
        ]));
        assert_eq!(
            t.run(),
            Ok(ExitStatus::Hlt),
            "no MMIO exit: the guest faults"
        );
    }
}

/// `mov [bx], ax` to MMIO with the fast path as `flags` sets it: the exit it makes and the
/// VMREADs the MMIO exit cost.
fn plain_store(flags: u32) -> ((u64, u8, u8, u64), u64, bool) {
    let mut t = setup();
    let control = rhax_api::ext::EmulationControl { flags, reserved: 0 };
    t.vcpu.set_emulation_control(&control).unwrap();
    let fast = t.vcpu.mmio_fast_path();
    real_mode(&mut t, &[0x89, 0x07], |s| {
        s.regs[reg::RBX] = 0x40;
        s.regs[reg::RAX] = 0xbeef;
    });
    t.hook(script(vec![violation(0xfee0_0040), hlt()]));
    assert_eq!(t.run(), Ok(ExitStatus::FastMmio));
    let exit = mmio(&mut t);
    let reads = t.vcpu.stats().reason(48).unwrap().vmreads;
    assert_eq!(t.run(), Ok(ExitStatus::Hlt), "the guest goes on");
    assert_eq!(
        t.rip(),
        0x1003,
        "past the MOV (2 bytes) and the hook's HLT (1)"
    );
    (exit, reads, fast)
}

#[test]
fn emulation_control_sends_a_plain_mov_through_the_general_path() {
    use rhax_api::ext::EmulationFlags;
    let (fast_exit, fast_reads, fast) = plain_store(0);
    let (slow_exit, slow_reads, slow) = plain_store(EmulationFlags::NO_MMIO_FAST_PATH.bits());
    assert!(fast && !slow);
    // The guest and the user side see the same store either way...
    assert_eq!(fast_exit, (0xfee0_0040, 2, 1, 0xbeef));
    assert_eq!(slow_exit, fast_exit);
    // ...but the general path did its own work (decode_full + execute reads more of the
    // VMCS: segment state for the linear address).
    assert_ne!(slow_reads, fast_reads, "the switch changed nothing");
}

#[test]
fn emulation_control_refuses_unknown_flags_with_nothing_changed() {
    use rhax_api::ext::{EmulationControl, EmulationFlags};
    let mut t = setup();
    let off = EmulationFlags::NO_MMIO_FAST_PATH.bits();
    let set = |t: &mut T, flags, reserved| {
        t.vcpu
            .set_emulation_control(&EmulationControl { flags, reserved })
    };
    assert!(t.vcpu.mmio_fast_path(), "on by default");
    assert_eq!(set(&mut t, off, 0), Ok(()));
    for (flags, reserved) in [(1 << 1, 0), (u32::MAX, 0), (0, 1), (off, u32::MAX)] {
        assert!(
            set(&mut t, flags, reserved).is_err(),
            "{flags:#x} {reserved:#x}"
        );
        assert!(
            !t.vcpu.mmio_fast_path(),
            "a refused control changed the switch"
        );
    }
    assert_eq!(set(&mut t, 0, 0), Ok(()));
    assert!(t.vcpu.mmio_fast_path());
}

#[test]
fn set_regs_abandons_the_mmio_instruction_in_flight() {
    let mut t = setup();
    real_mode(&mut t, &[0x01, 0x07], |s| {
        // add [bx], ax: its read exit leaves the instruction in flight
        s.regs[reg::RAX] = 1;
    });
    t.hook(script(vec![violation(0xfee0_0000), hlt()]));
    assert_eq!(t.run(), Ok(ExitStatus::FastMmio));
    assert_eq!(mmio3(&mut t), [0xfee0_0000, 2, 0]);
    // The client resets the vCPU (QEMU's system reset) before the next RUN.
    let mut s = t.vcpu.get_regs(&mut t.root).unwrap();
    s.rip = 0x2000;
    t.vcpu.set_regs(&mut t.root, &s).unwrap();
    assert_eq!(
        t.run(),
        Ok(ExitStatus::Hlt),
        "the guest runs at its new RIP, no stale write"
    );
    assert_eq!(t.rip(), 0x2001);
}
