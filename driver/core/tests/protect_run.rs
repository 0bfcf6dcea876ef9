//! PROTECT_RAM through RUN (issue 11 item 4): the guest's own accesses to a protected page
//! and every host-side copy made for the guest (string IO, the MMIO instruction's fetch and
//! memory operands) end the RUN with PAGEFAULT and change nothing; once user space
//! unprotects, the next RUN carries the instruction out (the Android quickboot flow).

mod common;
use common::*;
use rhax_api::vcpu::SegmentDesc;

fn pagefault(t: &mut T) -> (u64, u32) {
    let p = t.vcpu.with_tunnel(|t| *t.pagefault());
    (p.gpa, p.flags)
}

fn protect(t: &T, start: u64, end: u64) {
    t.mem.2.borrow_mut().push((start, end));
}

fn unprotect(t: &T) {
    t.mem.2.borrow_mut().clear();
}

fn regs(t: &mut T) -> (u64, u64, u64, u64) {
    let s = t.vcpu.get_regs(&mut t.root).unwrap();
    (s.regs[reg::RCX], s.regs[reg::RSI], s.regs[reg::RDI], s.rip)
}

#[test]
fn rep_outsb_from_a_protected_page_is_pagefault_then_the_io_exit() {
    let mut t = setup();
    for i in 0..8u8 {
        t.mem.0.borrow_mut()[0x5000 + usize::from(i)] = i;
    }
    t.hook(|c| {
        c.write(VmcsField::GuestLinearAddress, 0x5000);
        c.write(VmcsField::VmExitInstructionInformation, 1 << 7);
        c.exit(30, 0x03f8_0000 | 16 | 32, 2); // rep outsb
    });
    let mut s = t.vcpu.get_regs(&mut t.root).unwrap();
    s.regs[reg::RCX] = 8;
    s.regs[reg::RSI] = 0x5000;
    t.vcpu.set_regs(&mut t.root, &s).unwrap();
    let before = regs(&mut t);
    protect(&t, 0x5000, 0x6000);
    assert_eq!(t.run(), Ok(ExitStatus::PageFault));
    assert_eq!(pagefault(&mut t), (0x5000, 1), "the page, a read");
    assert_eq!(regs(&mut t), before, "the OUTS is taken back");
    unprotect(&t);
    assert_eq!(t.run(), Ok(ExitStatus::Io));
    assert_eq!(&t.vcpu.io_buffer_mut()[..8], &[0, 1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(regs(&mut t).0, 0);
}

#[test]
fn rep_insb_completion_into_a_protected_page_waits_for_the_unprotect() {
    let mut t = setup();
    t.hook(script(vec![
        Box::new(|c| {
            c.write(VmcsField::GuestLinearAddress, 0x7000);
            c.write(VmcsField::VmExitInstructionInformation, 0);
            c.exit(30, 0x0060_0000 | 8 | 16 | 32, 2); // rep insb
        }),
        Box::new(|c| c.exit(12, 0, 1)),
    ]));
    let mut s = t.vcpu.get_regs(&mut t.root).unwrap();
    s.regs[reg::RCX] = 3;
    s.regs[reg::RDI] = 0x7000;
    t.vcpu.set_regs(&mut t.root, &s).unwrap();
    assert_eq!(t.run(), Ok(ExitStatus::Io));
    t.vcpu.io_buffer_mut()[..3].copy_from_slice(&[7, 8, 9]);
    protect(&t, 0x7000, 0x8000);
    assert_eq!(t.run(), Ok(ExitStatus::PageFault));
    assert_eq!(pagefault(&mut t), (0x7000, 2), "the page, a write");
    assert_eq!(&t.mem.0.borrow()[0x7000..0x7003], &[0, 0, 0]);
    unprotect(&t);
    assert_eq!(
        t.run(),
        Ok(ExitStatus::Hlt),
        "the completion is retried, then the guest runs"
    );
    assert_eq!(&t.mem.0.borrow()[0x7000..0x7003], &[7, 8, 9]);
}

#[test]
fn mmio_instruction_on_a_protected_code_page_is_pagefault_then_emulated() {
    let mut t = setup();
    t.mem.0.borrow_mut()[0x1000..0x1002].copy_from_slice(&[0x89, 0x07]); // mov [bx], ax
    let mut s = t.vcpu.get_regs(&mut t.root).unwrap();
    s.cs = SegmentDesc::new(0, 0, 0xffff, 0x9b);
    s.rip = 0x1000;
    s.regs[reg::RAX] = 0x5678;
    t.vcpu.set_regs(&mut t.root, &s).unwrap();
    t.hook(|c| {
        c.write(VmcsField::GuestPhysicalAddress, 0xfee0_0000);
        c.exit(48, 2, 0);
    });
    protect(&t, 0x1000, 0x2000);
    assert_eq!(t.run(), Ok(ExitStatus::PageFault));
    assert_eq!(pagefault(&mut t), (0x1000, 4), "the code page, a fetch");
    assert_eq!(t.rip(), 0x1000);
    unprotect(&t);
    assert_eq!(t.run(), Ok(ExitStatus::FastMmio));
    let m = FastMmio::read_from_prefix(t.vcpu.io_buffer_mut()).unwrap();
    assert_eq!(
        (m.gpa, m.size, m.direction, m.value),
        (0xfee0_0000, 2, 1, 0x5678)
    );
}

#[test]
fn movsd_from_mmio_into_a_protected_page_changes_nothing_until_the_unprotect() {
    let mut t = setup();
    t.flat32(&[0xa5], |s| {
        // movsd
        s.regs[reg::RSI] = 0x20_0000;
        s.regs[reg::RDI] = 0x9000;
    });
    t.hook(script(vec![
        Box::new(|c| {
            c.write(VmcsField::GuestPhysicalAddress, 0x20_0000);
            c.exit(48, 1, 0);
        }),
        // After the unprotect the guest runs the MOVSD again: the same exit.
        Box::new(|c| {
            c.write(VmcsField::GuestPhysicalAddress, 0x20_0000);
            c.exit(48, 1, 0);
        }),
        Box::new(|c| c.exit(12, 0, 1)),
    ]));
    protect(&t, 0x9000, 0xa000);
    let before = regs(&mut t);
    assert_eq!(t.run(), Ok(ExitStatus::FastMmio), "the MMIO read first");
    let mut m = FastMmio::read_from_prefix(t.vcpu.io_buffer_mut()).unwrap();
    m.value = 0x1234_5678;
    t.vcpu.io_buffer_mut()[..56].copy_from_slice(m.as_bytes());
    assert_eq!(t.run(), Ok(ExitStatus::PageFault));
    assert_eq!(pagefault(&mut t), (0x9000, 2));
    assert_eq!(regs(&mut t), before, "nothing changed");
    unprotect(&t);
    assert_eq!(
        t.run(),
        Ok(ExitStatus::FastMmio),
        "re-executed: the read again"
    );
    let mut m = FastMmio::read_from_prefix(t.vcpu.io_buffer_mut()).unwrap();
    m.value = 0x1234_5678;
    t.vcpu.io_buffer_mut()[..56].copy_from_slice(m.as_bytes());
    assert_eq!(t.run(), Ok(ExitStatus::Hlt));
    assert_eq!(
        &t.mem.0.borrow()[0x9000..0x9004],
        &0x1234_5678u32.to_le_bytes()
    );
    let (_, rsi, rdi, _) = regs(&mut t);
    assert_eq!((rsi, rdi), (0x20_0004, 0x9004));
}

#[test]
fn the_guests_own_access_to_a_protected_page_is_pagefault_with_its_qualification() {
    let mut t = setup();
    t.hook(|c| {
        c.write(VmcsField::GuestPhysicalAddress, 0x3_4567);
        c.exit(48, 2, 0);
    });
    protect(&t, 0x3_4000, 0x3_5000);
    assert_eq!(t.run(), Ok(ExitStatus::PageFault));
    assert_eq!(pagefault(&mut t), (0x3_4000, 2));
}
