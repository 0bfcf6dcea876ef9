//! Prints the VMREAD/VMWRITE cost per VM exit in steady state, for CPUID and OUT exits, as
//! measured by the software VMX model (the CPU's view) on Bochs's Skylake-X MSR values.
//!
//! `cargo run -q -p rhax-core --example exit-costs`

use rhax_core::platform::{HeapPlatform, Platform};
use rhax_core::vcpu::{skip_instruction, Vcpu};
use rhax_core::vmcs::exit::VmExit;
use rhax_core::vmx::negotiate::negotiate;
use rhax_core::vmx::root::VmxRoot;
use rhax_core::vmx::soft::{msrs_from_tsv, GuestCpu, SoftVmx};

const TSV: &str = include_str!("../tests/data/bochs-vmx-msrs.tsv");

fn measure(name: &str, reason: u32, qualification: u64, len: u32) {
    let platform = HeapPlatform::new();
    let vmx = SoftVmx::new(msrs_from_tsv(TSV, "corei7_skylake_x").expect("model"));
    let controls = negotiate(vmx.caps()).expect("negotiation");
    let page = platform.alloc_pages(1).expect("page");
    // SAFETY: software model, one thread.
    let mut root = match unsafe { VmxRoot::enable(vmx, 0, page) } {
        Ok(r) => r,
        Err(e) => panic!("enable: {:?}", e.0),
    };
    let mut vcpu = Vcpu::new(&platform, &controls, 1, controls.eptp(0x4000_0000)).expect("vcpu");
    root.vmx()
        .set_hook(move |cpu: &mut GuestCpu<'_>| cpu.exit(reason, qualification, len));
    let (warmup, n) = (10u64, 1000u64);
    let (mut r0, mut w0, mut o0) = (0, 0, 0);
    for i in 0..warmup + n {
        if i == warmup {
            let c = &root.vmx().counts;
            (r0, w0, o0) = (
                c.vmread,
                c.vmwrite,
                c.vmlaunch + c.vmresume + c.vmptrld + c.vmclear,
            );
        }
        match vcpu.run(&mut root).expect("run") {
            VmExit::Cpuid | VmExit::Io(_) => vcpu
                .with_vmcs(&mut root, |v, _| skip_instruction(v))
                .expect("vmcs")
                .expect("skip"),
            other => panic!("unexpected exit {other:?}"),
        }
    }
    let c = &root.vmx().counts;
    let other = c.vmlaunch + c.vmresume + c.vmptrld + c.vmclear - o0;
    println!(
        "{name}: {} VMREAD, {} VMWRITE, {} other VMX instructions per exit (over {n} exits)",
        (c.vmread - r0) as f64 / n as f64,
        (c.vmwrite - w0) as f64 / n as f64,
        other as f64 / n as f64,
    );
    let mut fields: Vec<_> = c.reads_by_field.iter().collect();
    fields.sort_by(|a, b| b.1.cmp(a.1));
    let names: Vec<String> = fields
        .iter()
        .take(5)
        .map(|(e, k)| {
            let n = rhax_core::vmcs::VmcsField::from_encoding(**e).map_or("?", |f| f.name());
            format!("{n}={k}")
        })
        .collect();
    println!("  most read fields (whole run): {}", names.join(", "));
    vcpu.put(&mut root);
    vcpu.unload(&mut root).expect("unload");
    let _ = vcpu.destroy(&platform);
}

fn main() {
    measure("CPUID", 10, 0, 2);
    // OUT DX, AL to 0x3f8 (SDM Table 28-5).
    measure("OUT", 30, 0x03f8_0000, 1);
}
