//! Where an OUT round trip's instructions go: the guest and this process read the same TSC
//! (rhax's TSC offset is 0 until the guest writes IA32_TSC, and inside Bochs it counts
//! instructions in user mode as in the guest), so timestamps taken on both sides of the
//! boundary subtract directly.
//!
//! The guest loop (at [`CODE_GPA`]):
//!
//! ```text
//! top: rdtsc; mov [0x2000], eax    ; T_resume: just after RUN entered the guest again
//!      rdtsc; out PORT, eax        ; T_exit: just before the exit, sent as the OUT's data
//!      dec edi; jnz top
//! ```
//!
//! Around each RUN this process takes `t_call` and `t_return`. Then, per RUN:
//! * to user space = `t_return - T_exit`: the VM exit, rhax-core's IO exit handling, the
//!   way out of the RUN path, the system call's return;
//! * client = `t_call(next) - t_return`: this process between two RUNs;
//! * into the guest = `T_resume - t_call`: the system call, VFS, the glue, the dispatcher's
//!   RUN path, rhax-core up to VM entry, plus the guest's `dec edi; jnz`.
//!
//! Their sum is the OUT round trip less the loop's other guest instructions. The minimum of
//! each over the RUNs is printed (a host interrupt inflates a few). Beside them, ioctl(2)
//! floors: a bad fd (the system call alone), an unknown code on the vCPU's fd (system call,
//! VFS, the glue and rhax_ioctl up to ENOTTY), the same on `/dev/HAX`, and VERSION.

use rhax::api::IoDirection;
use rhax::{Exit, System, Transport, Vcpu};

/// Where the split loop is placed (beside the main guest at 0x1000, which is shorter).
pub const CODE_GPA: u64 = 0x1800;
/// Where the guest stores T_resume.
const STAMP_GPA: u64 = 0x2000;
/// The split loop's OUT port.
const PORT: u8 = 0x84;
/// Round trips measured.
const ITERATIONS: u32 = 200;

/// The split loop (16-bit real-mode code).
pub fn guest_code() -> Vec<u8> {
    let mut c = vec![0x66, 0xBF]; // mov edi, ITERATIONS
    c.extend(ITERATIONS.to_le_bytes());
    let top = c.len();
    c.extend([0x0F, 0x31]); // rdtsc
    c.extend([0x66, 0xA3]); // mov [STAMP_GPA], eax
    c.extend((STAMP_GPA as u16).to_le_bytes());
    c.extend([0x0F, 0x31]); // rdtsc
    c.extend([0x66, 0xE7, PORT]); // out PORT, eax
    c.extend([0x66, 0x4F]); // dec edi
    let rel = top as isize - (c.len() as isize + 2);
    c.extend([0x75, rel as i8 as u8]); // jnz top
    c.push(0xF4); // hlt
    c
}

/// The split of an OUT round trip and the ioctl floors (TSC minima; `-` where unmeasured).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Split {
    /// From the guest's last instruction before the OUT to RUN's return in user space.
    pub to_user: u32,
    /// This process between a RUN's return and the next RUN call.
    pub client: u32,
    /// From the RUN call to the guest's first timestamp after VM entry.
    pub into_guest: u32,
    /// ioctl(2) on a bad fd.
    pub bad_fd: Option<u64>,
    /// ioctl(2) with an unknown code on the vCPU's fd.
    pub vcpu_unknown: Option<u64>,
    /// `RHAX_VCPU_IOCTL_RESET_STATS`: a known vCPU ioctl without buffer (the dispatcher's
    /// lookup, the vCPU's lease); `None` on HAXM.
    pub reset_stats: Option<u64>,
    /// ioctl(2) with an unknown code on `/dev/HAX`.
    pub system_unknown: Option<u64>,
    /// `HAX_IOCTL_VERSION`.
    pub version: u64,
}

impl core::fmt::Display for Split {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let opt = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
        writeln!(
            f,
            "bench: OUT split (min of {ITERATIONS}, guest and user-space TSC): to user space {} \
             (VM exit, IO exit handling, RUN's way out, system call return), client {} (this \
             process between RUNs), into the guest {} (system call, VFS, glue, dispatcher, \
             rhax-core to VM entry), sum {}",
            self.to_user,
            self.client,
            self.into_guest,
            u64::from(self.to_user) + u64::from(self.client) + u64::from(self.into_guest)
        )?;
        write!(
            f,
            "bench: ioctl floors (min of 200): bad fd {} (system call only), unknown code on \
             the vCPU fd {} (system call, VFS, glue, rhax_ioctl, the dispatcher's whole table), \
             RESET_STATS {} (a known vCPU ioctl, no buffer), unknown code on /dev/HAX {}, \
             VERSION {}",
            opt(self.bad_fd),
            opt(self.vcpu_unknown),
            opt(self.reset_stats),
            opt(self.system_unknown),
            self.version
        )
    }
}

/// The TSC; inside Bochs the instruction count, in user mode as in the guest.
fn tsc() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: RDTSC has no side effects; Linux and Windows leave it enabled in user mode.
        unsafe { core::arch::x86_64::_rdtsc() }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        0
    }
}

/// The minimum TSC span of 200 calls of `f`.
fn min_span(mut f: impl FnMut()) -> u64 {
    (0..200)
        .map(|_| {
            let t0 = tsc();
            f();
            tsc().wrapping_sub(t0)
        })
        .min()
        .unwrap_or(0)
}

/// Runs the split loop (RIP set to [`CODE_GPA`]) and measures the floors. It resets rhax's
/// counters: read them before.
pub fn measure<T: Transport>(
    sys: &System<T>,
    vcpu: &mut Vcpu<T>,
    ram: u64,
) -> Result<Split, String> {
    let mut regs = vcpu.get_regs().map_err(|e| format!("GET_REGS: {e}"))?;
    regs.rip = CODE_GPA;
    vcpu.set_regs(&regs).map_err(|e| format!("SET_REGS: {e}"))?;
    let mut s = Split {
        to_user: u32::MAX,
        client: u32::MAX,
        into_guest: u32::MAX,
        ..Split::default()
    };
    let mut last_return: Option<u64> = None;
    let mut outs = 0;
    for _ in 0..2 * ITERATIONS + 1000 {
        let t_call = tsc();
        let exit = vcpu.run().map_err(|e| format!("RUN: {e}"))?;
        let t_return = tsc();
        match exit {
            Exit::Io {
                direction: IoDirection::Out,
                port,
                size: 4,
                data,
                ..
            } if port == u16::from(PORT) => {
                let t_exit =
                    u32::from_le_bytes(<[u8; 4]>::try_from(&data[..]).map_err(|_| "short data")?);
                // SAFETY: STAMP_GPA + 4 lies inside the guest RAM block at `ram` (64 KiB,
                // page-aligned, leaked: valid for the process); the guest writes it only while
                // the vCPU runs, which it does not now (RUN returned).
                let t_resume = unsafe { core::ptr::read_volatile((ram + STAMP_GPA) as *const u32) };
                s.to_user = s.to_user.min((t_return as u32).wrapping_sub(t_exit));
                s.into_guest = s.into_guest.min(t_resume.wrapping_sub(t_call as u32));
                if let Some(r) = last_return {
                    s.client = s.client.min((t_call as u32).wrapping_sub(r as u32));
                }
                last_return = Some(t_return);
                outs += 1;
            }
            // A host interrupt: the next RUN's client span would include this one.
            Exit::Interrupt | Exit::Paused => last_return = None,
            Exit::Hlt if outs == ITERATIONS => break,
            other => {
                return Err(format!(
                    "split loop: unexpected exit {other:?} after {outs} OUTs"
                ))
            }
        }
    }
    if outs != ITERATIONS {
        return Err(format!("split loop: {outs} OUTs, expected {ITERATIONS}"));
    }
    s.version = min_span(|| {
        let _ = sys.version();
    });
    let mut reset_ok = true;
    let span = min_span(|| reset_ok &= vcpu.reset_stats().is_ok());
    s.reset_stats = reset_ok.then_some(span);
    (s.bad_fd, s.vcpu_unknown, s.system_unknown) = floors();
    Ok(s)
}

/// ioctl(2) on a bad fd, and with code 0 (no HAXM code: rhax_ioctl answers ENOTTY before
/// reading the argument) on this process's vCPU fd (found in /proc/self/fd) and on a fresh
/// `/dev/HAX` fd.
#[cfg(target_os = "linux")]
fn floors() -> (Option<u64>, Option<u64>, Option<u64>) {
    use std::os::fd::AsRawFd;
    let ioctl0 = |fd: i32| {
        min_span(|| {
            // SAFETY: code 0 with a null argument: nothing is read or written through it;
            // a bad or foreign fd only gets an error.
            unsafe { libc::ioctl(fd, 0, 0usize) };
        })
    };
    let vcpu_fd = std::fs::read_dir("/proc/self/fd").ok().and_then(|d| {
        d.filter_map(|e| e.ok())
            .find(|e| {
                std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().contains("vcpu"))
            })
            .and_then(|e| e.file_name().to_str()?.parse::<i32>().ok())
    });
    let system = std::fs::File::open("/dev/HAX").ok();
    (
        Some(ioctl0(-1)),
        vcpu_fd.map(ioctl0),
        system.as_ref().map(|f| ioctl0(f.as_raw_fd())),
    )
}

#[cfg(not(target_os = "linux"))]
fn floors() -> (Option<u64>, Option<u64>, Option<u64>) {
    (None, None, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_split_loop_jumps_back_to_its_first_rdtsc() {
        let c = guest_code();
        let jnz = c.iter().rposition(|b| *b == 0x75).expect("jnz");
        let target = (jnz as isize + 2 + isize::from(c[jnz + 1] as i8)) as usize;
        assert_eq!(&c[target..target + 2], &[0x0F, 0x31]);
        assert_eq!(target, 6, "right after mov edi, imm32");
        assert_eq!(c.last(), Some(&0xF4));
        // It fits between the main guest's end and the stamp.
        assert!(CODE_GPA as usize + c.len() <= STAMP_GPA as usize);
        assert!(
            super::super::CODE_GPA as usize + super::super::guest_code(100, 20).len()
                <= CODE_GPA as usize
        );
    }
}
