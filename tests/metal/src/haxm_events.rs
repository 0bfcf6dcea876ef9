//! `haxm-events`: the RUN statuses the conformance run cannot reach on its own, through userlib
//! over the in-kernel transport (`hv.rs`), on emulated VT-x:
//!
//! * INTERRUPT for a guest spinning in `jmp $` (the run budget / preemption timer brings RUN
//!   back; the time is measured with the TSC, which in Bochs counts instructions);
//! * PAUSED for `_exit_reason = 8` (Android's handshake) without entering the guest;
//! * INTERRUPT for `user_event_pending`, bit 0 cleared;
//! * an error for a VM-entry failure (HAXM on Windows: GEN_FAILURE), then a good SET_REGS
//!   and the guest runs;
//! * refusals on a raw vCPU handle (too many MSRs, short buffers);
//! * STATECHANGE on a triple fault, and on every later RUN.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use rhax::api::SegmentDesc;
use rhax::{Error, Exit, OsError, Transport};

use crate::arch::rdtsc;
use crate::haxm::{
    e, expect, io_out, next, qemu_msrs, qemu_set, raw, real_mode_at, simple_vm, Ev, Ram, R, V,
};
use crate::hv::Shell;
use crate::scenarios::Ctx;
use crate::time;

/// `jmp $`.
const SPIN: u64 = 0x1000;
/// `mov al, 0x55; out 0x80, al; hlt`.
const OUT_HLT: u64 = 0x1100;
/// `lidt [0x700]` (limit 0), `int3`: #GP on the IVT limit, #DF, shutdown.
const TRIPLE: u64 = 0x1200;
/// The 6-byte IDTR image `lidt` loads.
const IDTR: u64 = 0x700;
/// RUNs of the spinning guest measured.
const SPINS: usize = 8;

/// The guest's linear RIP (real mode: CS base + IP).
fn rip(v: &V<'_>) -> R<u64> {
    let s = v.get_regs().map_err(e("GET_REGS"))?;
    Ok(s.cs.base + s.rip)
}

/// The OUT then HLT of the guest at [`OUT_HLT`] (`mov al, 0x55; out 0x80, al; hlt`).
pub(crate) fn out_then_hlt(v: &mut V<'_>, what: &str) -> R<()> {
    expect(
        &format!("{what}: OUT"),
        next(v, 0)?,
        io_out(0x80, 1, &[0x55]),
    )?;
    expect(&format!("{what}: HLT"), next(v, 0)?, Ev::Hlt)
}

/// One RUN that must fail as a VM-entry failure does: Win32 GEN_FAILURE (31) from
/// STATUS_UNSUCCESSFUL, as HAXM's Windows driver completes RUN with `-EINVAL`.
fn expect_entry_failure(v: &mut V<'_>, what: &str) -> R<()> {
    match v.run() {
        Err(Error::Run(OsError::Win32(31))) => Ok(()),
        Err(other) => Err(format!(
            "{what}: RUN failed with {other:?}, expected GEN_FAILURE (31)"
        )),
        Ok(exit) => Err(format!(
            "{what}: RUN returned {exit:?}, expected an entry failure"
        )),
    }
}

fn expect_state_change(v: &mut V<'_>, what: &str) -> R<()> {
    match v.run().map_err(e("RUN"))? {
        Exit::StateChange => Ok(()),
        other => Err(format!("{what}: {other:?}, expected STATECHANGE")),
    }
}

/// See the module documentation.
pub fn haxm_events(_: &Ctx) -> R<String> {
    use rhax::api::ioctl as c;
    let ram = Ram::new(0x1_0000)?;
    ram.write(SPIN, &[0xEB, 0xFE]); // jmp $
    ram.write(
        OUT_HLT,
        &[
            0xB0, 0x55, // mov al, 0x55
            0xE6, 0x80, // out 0x80, al
            0xF4, // hlt
        ],
    );
    ram.write(IDTR, &[0; 6]); // limit 0, base 0
    ram.write(
        TRIPLE,
        &[
            0x0F, 0x01, 0x1E, 0x00, 0x07, // lidt [0x700]
            0xCC, // int3: vector 3 is beyond the limit: #GP, then #DF, then shutdown
            0xEB, 0xFE, // jmp $ (never reached)
        ],
    );
    let shell = Shell::new()?;
    let t = shell.transport();
    let (sys, _vm, mut v) = simple_vm(&shell, &ram)?;
    qemu_set(&v, &real_mode_at(SPIN), &qemu_msrs())?;

    // 1. A guest that never exits on its own: RUN still comes back, with INTERRUPT.
    let hz = time::tsc_hz();
    let mut ticks = Vec::with_capacity(SPINS);
    for i in 0..SPINS {
        let t0 = rdtsc();
        let exit = v.run().map_err(e("RUN spinning"))?;
        let dt = rdtsc() - t0;
        if !matches!(exit, Exit::Interrupt) {
            return Err(format!("spin RUN {i}: {exit:?}, expected INTERRUPT"));
        }
        // A generous bound: the budget is far below it; this only catches "never comes back
        // until something else happens to interrupt".
        if dt > hz {
            return Err(format!("spin RUN {i}: {dt} TSC ticks (> 1 s at {hz} Hz)"));
        }
        ticks.push(dt);
        if rip(&v)? != SPIN {
            return Err(format!("spin RUN {i}: RIP left the jmp $"));
        }
    }
    let max = ticks.iter().copied().max().unwrap_or(0);
    let avg = ticks.iter().sum::<u64>() / SPINS as u64;
    let us = |t: u64| t * 1_000_000 / hz.max(1);
    crate::println!("bench: haxm-spin-run-max {} us", us(max));
    crate::println!("bench: haxm-spin-run-avg {} us", us(avg));

    // 2. The pause handshake: PAUSED without entering the guest, then a normal RUN.
    v.set_regs(&real_mode_at(OUT_HLT)).map_err(e("SET_REGS"))?;
    v.request_pause();
    match v.run().map_err(e("RUN pause"))? {
        Exit::Paused => {}
        other => return Err(format!("pause: {other:?}, expected PAUSED")),
    }
    if rip(&v)? != OUT_HLT {
        return Err(String::from("pause: the guest ran (RIP moved)"));
    }
    out_then_hlt(&mut v, "after PAUSED")?;

    // 3. user_event_pending: INTERRUPT before the guest runs, bit 0 cleared.
    v.set_regs(&real_mode_at(OUT_HLT)).map_err(e("SET_REGS"))?;
    v.set_user_event_pending(true);
    match v.run().map_err(e("RUN user event"))? {
        Exit::Interrupt => {}
        other => return Err(format!("user_event_pending: {other:?}, expected INTERRUPT")),
    }
    if v.user_event_pending() {
        return Err(String::from("user_event_pending: bit 0 still set"));
    }
    if rip(&v)? != OUT_HLT {
        return Err(String::from(
            "user_event_pending: the guest ran (RIP moved)",
        ));
    }
    out_then_hlt(&mut v, "after user event")?;

    // 4. VM-entry failures from SET_REGS states the core passes through to the VMCS; after
    // each, a good SET_REGS and the guest runs.
    let mut bad = real_mode_at(OUT_HLT);
    bad.rflags = 0; // RFLAGS bit 1 must be 1 (SDM Vol. 3C §27.3.1.4)
    v.set_regs(&bad).map_err(e("SET_REGS bad RFLAGS"))?;
    expect_entry_failure(&mut v, "RFLAGS bit 1 clear")?;
    expect_entry_failure(&mut v, "RFLAGS bit 1 clear, again")?;
    v.set_regs(&real_mode_at(OUT_HLT))
        .map_err(e("SET_REGS good"))?;
    out_then_hlt(&mut v, "after RFLAGS fix")?;
    let mut bad = real_mode_at(OUT_HLT);
    // CS not present (P = 0): CS is never unusable, P must be 1 (SDM Vol. 3C §27.3.1.2).
    bad.cs = SegmentDesc::new(0, 0, 0xffff, 0x1b);
    v.set_regs(&bad).map_err(e("SET_REGS CS not present"))?;
    expect_entry_failure(&mut v, "CS not present")?;
    v.set_regs(&real_mode_at(OUT_HLT))
        .map_err(e("SET_REGS good"))?;
    out_then_hlt(&mut v, "after CS fix")?;

    // 5. Bad input on a vCPU handle (userlib refuses these itself, so a raw handle: a second
    // VM and vCPU made through the transport).
    let sysh = t
        .open(rhax::DevicePath::System)
        .map_err(|e| format!("open system: {e:?}"))?;
    let mut idb = [0u8; 4];
    t.ioctl(
        &sysh,
        rhax::IoctlRequest {
            def: &c::HAX_IOCTL_CREATE_VM,
            code: c::HAX_IOCTL_CREATE_VM.code(t.platform()).unwrap_or(0),
            buf: rhax::IoctlBuf::Out(&mut idb),
        },
    )
    .map_err(|e| format!("CREATE_VM raw: {e:?}"))?;
    let id2 = u32::from_le_bytes(idb);
    let vmh = t
        .open(rhax::DevicePath::Vm { vm: id2 })
        .map_err(|e| format!("open VM {id2}: {e:?}"))?;
    let created = raw(
        &t,
        &vmh,
        &c::HAX_VM_IOCTL_VCPU_CREATE,
        &0u32.to_le_bytes(),
        0,
    );
    let vch = t
        .open(rhax::DevicePath::Vcpu { vm: id2, vcpu: 0 })
        .map_err(|e| format!("open vCPU {id2}.0: {e:?}"))?;
    // MsrData: nr_msr u16, done u16, pad u32, 32 entries of (u64, u64): 520 bytes.
    let msrs = |n: u16| {
        let mut b = alloc::vec![0u8; 520];
        b[..2].copy_from_slice(&n.to_le_bytes());
        for i in 0..32 {
            b[8 + 16 * i..16 + 16 * i].copy_from_slice(&0x174u64.to_le_bytes());
        }
        b
    };
    let checks: Vec<(&str, Option<u32>, Option<u32>)> = alloc::vec![
        ("VCPU_CREATE on the raw VM", created, None),
        (
            "SET_MSRS with 32 entries",
            raw(&t, &vch, &c::HAX_VCPU_IOCTL_SET_MSRS, &msrs(32), 520),
            Some(87),
        ),
        (
            "GET_MSRS with 32 entries",
            raw(&t, &vch, &c::HAX_VCPU_IOCTL_GET_MSRS, &msrs(32), 520),
            Some(87),
        ),
        (
            "SET_MSRS with 31 entries",
            raw(&t, &vch, &c::HAX_VCPU_IOCTL_SET_MSRS, &msrs(31), 520),
            None,
        ),
        (
            "SET_MSRS short input",
            raw(&t, &vch, &c::HAX_VCPU_IOCTL_SET_MSRS, &[0u8; 8], 8),
            Some(87),
        ),
        (
            "SET_REGS short input",
            raw(&t, &vch, &c::HAX_VCPU_SET_REGS, &[0u8; 8], 0),
            Some(87),
        ),
        (
            "GET_REGS short output",
            raw(&t, &vch, &c::HAX_VCPU_GET_REGS, &[], 8),
            Some(87),
        ),
        (
            "VM IOCTL on a vCPU handle",
            raw(
                &t,
                &vch,
                &c::HAX_VM_IOCTL_VCPU_CREATE,
                &1u32.to_le_bytes(),
                0
            ),
            Some(87),
        ),
    ];
    t.close(vch);
    t.close(vmh);
    t.close(sysh);
    let failures: Vec<String> = checks
        .iter()
        .filter(|(_, got, want)| got != want)
        .map(|(what, got, want)| format!("{what}: got {got:?}, expected {want:?}"))
        .collect();
    if !failures.is_empty() {
        return Err(failures.join("; "));
    }
    // The first VM is untouched.
    v.set_regs(&real_mode_at(OUT_HLT)).map_err(e("SET_REGS"))?;
    out_then_hlt(&mut v, "after raw refusals")?;

    // 6. Triple fault: STATECHANGE, and again on every later RUN (also after SET_REGS).
    v.set_regs(&real_mode_at(TRIPLE)).map_err(e("SET_REGS"))?;
    expect_state_change(&mut v, "triple fault")?;
    expect_state_change(&mut v, "RUN after the triple fault")?;
    v.set_regs(&real_mode_at(OUT_HLT)).map_err(e("SET_REGS"))?;
    expect_state_change(&mut v, "RUN after SET_REGS after the triple fault")?;
    drop(sys);
    Ok(format!(
        "spin RUN max {} us avg {} us ({SPINS} RUNs), PAUSED, user event, 2 entry failures \
         fixed, {} raw refusals, sticky STATECHANGE",
        us(max),
        us(avg),
        checks.len()
    ))
}
