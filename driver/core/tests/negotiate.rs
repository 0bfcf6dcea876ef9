//! VMX capability decoding and control negotiation against the real MSR values of every Bochs
//! 2.7 CPU model (tests/data/bochs-vmx-msrs.tsv), with the expected feature sets transcribed
//! from bochs-vmx.md §7, plus property tests on synthetic MSR values.

use std::collections::{BTreeMap, BTreeSet};

use rhax_core::vmx::caps::*;
use rhax_core::vmx::negotiate::*;

const TSV: &str = include_str!("data/bochs-vmx-msrs.tsv");

/// One model's MSR values, by MSR index.
type Msrs = BTreeMap<u32, u64>;

fn hex(s: &str) -> u64 {
    let s = s.trim();
    let digits = s
        .strip_prefix("0x")
        .unwrap_or_else(|| panic!("not hex: {s:?}"));
    u64::from_str_radix(digits, 16).unwrap_or_else(|e| panic!("bad hex {s:?}: {e}"))
}

/// Parses the TSV: `model  msr  value  true_value`; FIXED0/1 rows hold `a / b`; `-` = none.
fn models() -> BTreeMap<String, Msrs> {
    let mut lines = TSV.lines();
    assert_eq!(lines.next(), Some("model\tmsr\tvalue\ttrue_value"));
    let mut out: BTreeMap<String, Msrs> = BTreeMap::new();
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let cols: Vec<&str> = line.split('\t').collect();
        assert_eq!(cols.len(), 4, "bad row {line:?}");
        let msrs = out.entry(cols[0].to_string()).or_default();
        let mut put = |index: u32, value: u64| {
            assert!(
                msrs.insert(index, value).is_none(),
                "duplicate {index:#x} in {line:?}"
            );
        };
        let value = cols[2];
        let true_index = match cols[1] {
            "IA32_VMX_BASIC" => {
                put(IA32_VMX_BASIC, hex(value));
                None
            }
            "IA32_VMX_PINBASED_CTLS" => {
                put(IA32_VMX_PINBASED_CTLS, hex(value));
                Some(IA32_VMX_TRUE_PINBASED_CTLS)
            }
            "IA32_VMX_PROCBASED_CTLS" => {
                put(IA32_VMX_PROCBASED_CTLS, hex(value));
                Some(IA32_VMX_TRUE_PROCBASED_CTLS)
            }
            "IA32_VMX_EXIT_CTLS" => {
                put(IA32_VMX_EXIT_CTLS, hex(value));
                Some(IA32_VMX_TRUE_EXIT_CTLS)
            }
            "IA32_VMX_ENTRY_CTLS" => {
                put(IA32_VMX_ENTRY_CTLS, hex(value));
                Some(IA32_VMX_TRUE_ENTRY_CTLS)
            }
            "IA32_VMX_MISC" => {
                put(IA32_VMX_MISC, hex(value));
                None
            }
            "IA32_VMX_CR0_FIXED0/1" | "IA32_VMX_CR4_FIXED0/1" => {
                let (f0, f1) = value.split_once(" / ").expect("FIXED0 / FIXED1 pair");
                let base = if cols[1].contains("CR0") {
                    IA32_VMX_CR0_FIXED0
                } else {
                    IA32_VMX_CR4_FIXED0
                };
                put(base, hex(f0));
                put(base + 1, hex(f1));
                None
            }
            "IA32_VMX_VMCS_ENUM" => {
                put(IA32_VMX_VMCS_ENUM, hex(value));
                None
            }
            "IA32_VMX_PROCBASED_CTLS2" => {
                put(IA32_VMX_PROCBASED_CTLS2, hex(value));
                None
            }
            "IA32_VMX_EPT_VPID_CAP" => {
                put(IA32_VMX_EPT_VPID_CAP, hex(value));
                None
            }
            "IA32_VMX_VMFUNC" => {
                put(IA32_VMX_VMFUNC, hex(value));
                None
            }
            "IA32_VMX_PROCBASED_CTLS3" => {
                put(IA32_VMX_PROCBASED_CTLS3, hex(value));
                None
            }
            other => panic!("unknown MSR name {other:?}"),
        };
        match (true_index, cols[3]) {
            (Some(index), true_value) if true_value != "-" => put(index, hex(true_value)),
            (None, "-") => {}
            _ => panic!("unexpected true_value in {line:?}"),
        }
    }
    // The TSV has no IA32_FEATURE_CONTROL; use what the Bochs BIOS leaves: locked, VMX on.
    for msrs in out.values_mut() {
        msrs.insert(IA32_FEATURE_CONTROL, 0x5);
    }
    out
}

/// Reads a model's capabilities, recording which MSRs were read. Reading an MSR that the
/// table does not have fails the test (on hardware it would be #GP).
fn read_caps(model: &str, msrs: &Msrs) -> (VmxCaps, BTreeSet<u32>) {
    let mut read = BTreeSet::new();
    let caps = VmxCaps::read(|msr| {
        assert!(read.insert(msr), "{model}: MSR {msr:#x} read twice");
        *msrs
            .get(&msr)
            .unwrap_or_else(|| panic!("{model}: read of absent MSR {msr:#x}"))
    });
    (caps, read)
}

/// Expected optional features per model: bochs-vmx.md §7, columns VPID, EPT A/D, preempt
/// timer, TPR shadow, virt APIC acc, x2APIC virt, APIC-reg virt, virt-intr deliv, PML, MTF,
/// and 2M/1G EPT. `vmfunc` is the VMFUNC column (it decides whether IA32_VMX_VMFUNC exists).
struct Expected {
    model: &'static str,
    features: OptionalFeatures,
    vmfunc: bool,
}

fn expected() -> Vec<Expected> {
    use OptionalFeatures as F;
    // Columns every accepted Bochs model shares: VPID, preemption timer, TPR shadow,
    // APIC-access and x2APIC virtualization, 2M EPT pages.
    let common = F::VPID
        | F::PREEMPTION_TIMER
        | F::TPR_SHADOW
        | F::VIRTUALIZE_APIC_ACCESSES
        | F::VIRTUALIZE_X2APIC
        | F::EPT_2M_PAGES;
    let nehalem = common; // arrandale, sandy, ivy: no A/D, no APICv, no 1G
    let apicv = F::APIC_REGISTER_VIRTUALIZATION | F::VIRTUAL_INTERRUPT_DELIVERY;
    let haswell = common | F::EPT_ACCESSED_DIRTY | F::EPT_1G_PAGES | apicv;
    let e = |model, features, vmfunc| Expected {
        model,
        features,
        vmfunc,
    };
    vec![
        e("broadwell_ult", haswell, true),
        e("bx_generic", haswell, true),
        e(
            "corei3_cnl",
            common | F::EPT_ACCESSED_DIRTY | F::EPT_1G_PAGES,
            true,
        ),
        e("corei5_arrandale_m520", nehalem, false),
        e("corei7_sandy_bridge_2600k", nehalem, false),
        e("corei7_ivy_bridge_3770k", nehalem, false),
        e("corei7_haswell_4770", haswell, true),
        e("corei7_skylake_x", haswell | F::PML, true),
        e(
            "corei7_icelake_u",
            haswell | F::PML | F::MONITOR_TRAP_FLAG,
            true,
        ),
        e("tigerlake", haswell | F::PML | F::MONITOR_TRAP_FLAG, true),
    ]
}

/// The §7 columns compared exactly; other optional features are checked separately.
const TABLE_COLUMNS: OptionalFeatures = OptionalFeatures::VPID
    .union(OptionalFeatures::EPT_ACCESSED_DIRTY)
    .union(OptionalFeatures::PREEMPTION_TIMER)
    .union(OptionalFeatures::TPR_SHADOW)
    .union(OptionalFeatures::VIRTUALIZE_APIC_ACCESSES)
    .union(OptionalFeatures::VIRTUALIZE_X2APIC)
    .union(OptionalFeatures::APIC_REGISTER_VIRTUALIZATION)
    .union(OptionalFeatures::VIRTUAL_INTERRUPT_DELIVERY)
    .union(OptionalFeatures::PML)
    .union(OptionalFeatures::MONITOR_TRAP_FLAG)
    .union(OptionalFeatures::EPT_2M_PAGES)
    .union(OptionalFeatures::EPT_1G_PAGES);

const REFUSED: [&str; 2] = ["core2_penryn_t9600", "corei5_lynnfield_750"];

/// Asserts `value` satisfies the allowed-0/allowed-1 halves of the raw MSR value `msr`.
fn assert_fits(model: &str, what: &str, value: u32, msr: u64) {
    let must = msr as u32;
    let may = (msr >> 32) as u32;
    assert_eq!(
        value & must,
        must,
        "{model}: {what} {value:#x} lacks must-be-one bits of {msr:#x}"
    );
    assert_eq!(
        value & !may,
        0,
        "{model}: {what} {value:#x} sets bits not allowed by {msr:#x}"
    );
}

#[test]
fn table_covers_every_model() {
    let models = models();
    assert_eq!(models.len(), 12);
    let mut known: BTreeSet<&str> = expected().iter().map(|e| e.model).collect();
    known.extend(REFUSED);
    let in_table: BTreeSet<&str> = models.keys().map(String::as_str).collect();
    assert_eq!(known, in_table);
    for (model, msrs) in &models {
        assert_eq!(
            msrs.len(),
            20,
            "{model}: 15 MSRs in 13 rows (FIXED0/1 pairs) + 4 TRUE + FEATURE_CONTROL"
        );
    }
}

#[test]
fn only_existing_msrs_are_read() {
    let models = models();
    for (model, msrs) in &models {
        let (caps, read) = read_caps(model, msrs);
        // Every model has BASIC bit 55, so the TRUE MSRs exist and are read.
        for msr in IA32_VMX_TRUE_PINBASED_CTLS..=IA32_VMX_TRUE_ENTRY_CTLS {
            assert!(read.contains(&msr), "{model}: TRUE MSR {msr:#x} not read");
        }
        assert!(caps.basic.true_controls, "{model}");
        // No model offers tertiary controls: CTLS3 (present in the TSV as 0) must not be read.
        assert!(!read.contains(&IA32_VMX_PROCBASED_CTLS3), "{model}");
        // Penryn offers neither EPT nor VPID: EPT_VPID_CAP does not exist there.
        assert_eq!(
            read.contains(&IA32_VMX_EPT_VPID_CAP),
            model != "core2_penryn_t9600",
            "{model}"
        );
        let vmfunc = expected()
            .iter()
            .find(|e| e.model == model.as_str())
            .is_some_and(|e| e.vmfunc);
        assert_eq!(
            read.contains(&IA32_VMX_VMFUNC),
            vmfunc,
            "{model}: VMFUNC read"
        );
    }
}

#[test]
fn decoded_fields_match_bochs_notes() {
    // bochs-vmx.md §7 notes: revision 0x2b (0x4 on icelake/tigerlake), timer rate 0,
    // activity states HLT/shutdown/wait-for-SIPI, 4 CR3 targets, VMWRITE-any on Haswell and
    // later, zero-length injection on skylake_x/cnl/icelake/tigerlake, bit 56 on tigerlake.
    let vmwrite_any = [
        "broadwell_ult",
        "bx_generic",
        "corei3_cnl",
        "corei7_haswell_4770",
        "corei7_icelake_u",
        "corei7_skylake_x",
        "tigerlake",
    ];
    let zero_len = [
        "corei3_cnl",
        "corei7_icelake_u",
        "corei7_skylake_x",
        "tigerlake",
    ];
    for (model, msrs) in &models() {
        let (caps, _) = read_caps(model, msrs);
        let m = model.as_str();
        let rev = if matches!(m, "corei7_icelake_u" | "tigerlake") {
            0x4
        } else {
            0x2b
        };
        assert_eq!(caps.basic.revision_id, rev, "{m}");
        assert_eq!(caps.basic.region_size, 4096, "{m}");
        assert_eq!(caps.basic.memory_type, MEMORY_TYPE_WB, "{m}");
        assert!(caps.basic.ins_outs_info, "{m}");
        assert_eq!(caps.basic.no_error_code_check, m == "tigerlake", "{m}");
        assert_eq!(caps.misc.preemption_timer_rate, 0, "{m}");
        assert!(caps.misc.activity_hlt && caps.misc.activity_shutdown, "{m}");
        assert!(caps.misc.activity_wait_for_sipi, "{m}");
        assert_eq!(caps.misc.cr3_target_count, 4, "{m}");
        assert_eq!(caps.misc.vmwrite_exit_info, vmwrite_any.contains(&m), "{m}");
        assert_eq!(
            caps.misc.zero_length_injection,
            zero_len.contains(&m),
            "{m}"
        );
        assert_eq!(caps.cr0_fixed.must_be_one, 0x8000_0021, "{m}");
        assert_eq!(caps.cr4_fixed.must_be_one, 0x2000, "{m}");
        assert_eq!(caps.proc3_may_be_one, 0, "{m}");
        // TRUE controls are what is decoded: CR3 load/store exiting may be 0.
        assert!(caps.proc.can_clear(
            (PrimaryProcControls::CR3_LOAD_EXITING | PrimaryProcControls::CR3_STORE_EXITING).bits()
        ));
    }
}

#[test]
fn penryn_and_lynnfield_are_refused_with_the_missing_feature_named() {
    let models = models();
    let (penryn, _) = read_caps("penryn", &models["core2_penryn_t9600"]);
    let err = negotiate(&penryn).unwrap_err();
    assert_eq!(err, NegotiationError::MissingFeature(Feature::Ept));
    assert_eq!(
        err.to_string(),
        "VT-x lacks EPT (secondary control bit 1), which rhax requires"
    );
    let missing: Vec<Feature> = missing_features(&penryn).collect();
    for f in [
        Feature::Ept,
        Feature::UnrestrictedGuest,
        Feature::SaveGuestEfer,
        Feature::LoadHostEfer,
        Feature::LoadGuestEfer,
    ] {
        assert!(missing.contains(&f), "penryn should lack {f}");
    }

    let (lynnfield, _) = read_caps("lynnfield", &models["corei5_lynnfield_750"]);
    let err = negotiate(&lynnfield).unwrap_err();
    assert_eq!(
        err,
        NegotiationError::MissingFeature(Feature::UnrestrictedGuest)
    );
    assert_eq!(
        err.to_string(),
        "VT-x lacks unrestricted guest (secondary control bit 7), which rhax requires"
    );
    assert_eq!(
        missing_features(&lynnfield).collect::<Vec<_>>(),
        [Feature::UnrestrictedGuest]
    );
}

#[test]
fn every_other_model_negotiates_the_expected_set() {
    use OptionalFeatures as F;
    let models = models();
    for e in expected() {
        let msrs = &models[e.model];
        let (caps, _) = read_caps(e.model, msrs);
        let c = negotiate(&caps).unwrap_or_else(|err| panic!("{}: {err}", e.model));
        assert_eq!(
            c.available & TABLE_COLUMNS,
            e.features,
            "{}: optional set vs §7",
            e.model
        );

        // Features every accepted Bochs model offers beyond the §7 columns.
        let everywhere = F::RDTSCP
            | F::INVEPT_SINGLE_CONTEXT
            | F::INVVPID_SINGLE_CONTEXT
            | F::VIRTUAL_NMIS
            | F::TSC_OFFSETTING
            | F::PAT_SWITCHING
            | F::DEBUG_CONTROLS
            | F::WBINVD_EXITING
            | F::SAVE_PREEMPTION_TIMER;
        assert!(
            c.available.contains(everywhere),
            "{}: {:?}",
            e.model,
            c.available
        );
        // INVPCID is secondary bit 12: offered from Haswell on (not by the Nehalem-era models).
        let invpcid = (msrs[&IA32_VMX_PROCBASED_CTLS2] >> 32) & (1 << 12) != 0;
        assert_eq!(c.available.contains(F::INVPCID), invpcid, "{}", e.model);

        // Baseline: everything non-dynamic that is available, nothing dynamic.
        assert_eq!(c.enabled, c.available - F::DYNAMIC, "{}", e.model);
        assert!(c.true_controls, "{}", e.model);

        // Every programmed value respects the TRUE MSR it was negotiated against.
        assert_fits(
            e.model,
            "pin",
            c.pin.bits(),
            msrs[&IA32_VMX_TRUE_PINBASED_CTLS],
        );
        assert_fits(
            e.model,
            "proc",
            c.proc.bits(),
            msrs[&IA32_VMX_TRUE_PROCBASED_CTLS],
        );
        assert_fits(
            e.model,
            "proc2",
            c.proc2.bits(),
            msrs[&IA32_VMX_PROCBASED_CTLS2],
        );
        assert_fits(
            e.model,
            "exit",
            c.exit.bits(),
            msrs[&IA32_VMX_TRUE_EXIT_CTLS],
        );
        assert_fits(
            e.model,
            "entry",
            c.entry.bits(),
            msrs[&IA32_VMX_TRUE_ENTRY_CTLS],
        );
        assert!(c.proc3.is_empty());
        c.validate().unwrap();

        // The required controls are on; the ones EPT + UG make pointless are off.
        assert!(c.proc2.contains(
            SecondaryProcControls::ENABLE_EPT
                | SecondaryProcControls::UNRESTRICTED_GUEST
                | SecondaryProcControls::ENABLE_VPID
        ));
        assert!(c.proc.contains(
            PrimaryProcControls::HLT_EXITING
                | PrimaryProcControls::USE_IO_BITMAPS
                | PrimaryProcControls::USE_MSR_BITMAPS
                | PrimaryProcControls::ACTIVATE_SECONDARY_CONTROLS
                | PrimaryProcControls::USE_TSC_OFFSETTING
        ));
        assert!(!c.proc.intersects(
            PrimaryProcControls::CR3_LOAD_EXITING
                | PrimaryProcControls::CR3_STORE_EXITING
                | PrimaryProcControls::INVLPG_EXITING
                | PrimaryProcControls::INTERRUPT_WINDOW_EXITING
                | PrimaryProcControls::MONITOR_TRAP_FLAG
                | PrimaryProcControls::UNCONDITIONAL_IO_EXITING
        ));
        assert!(c.pin.contains(
            PinBasedControls::EXTERNAL_INTERRUPT_EXITING
                | PinBasedControls::NMI_EXITING
                | PinBasedControls::VIRTUAL_NMIS
        ));
        assert!(c.exit.contains(
            ExitControls::HOST_ADDRESS_SPACE_SIZE
                | ExitControls::SAVE_EFER
                | ExitControls::LOAD_EFER
                | ExitControls::SAVE_PAT
                | ExitControls::LOAD_PAT
                | ExitControls::SAVE_DEBUG_CONTROLS
        ));
        assert!(c.entry.contains(
            EntryControls::LOAD_EFER | EntryControls::LOAD_PAT | EntryControls::LOAD_DEBUG_CONTROLS
        ));
        assert!(!c.entry.contains(EntryControls::IA32E_MODE_GUEST));

        // Unrestricted guest frees CR0.PE and CR0.PG (SDM 27.3.1.1); NE stays fixed.
        assert!(c.guest_cr0_fixed.accepts(0x20)); // real mode, paging off, NE
        assert!(c.guest_cr0_fixed.accepts(0x6000_0030));
        assert!(!c.host_cr0_fixed.accepts(0x20));
        assert_eq!(c.guest_cr0_fixed.must_be_one, 0x20);
        assert_eq!(c.eptp(0x1000) & 0x3f, 6 | (3 << 3));
        assert_eq!(
            c.eptp(0x1000) & (1 << 6) != 0,
            e.features.contains(F::EPT_ACCESSED_DIRTY)
        );

        // Every dynamic feature that is offered can be turned on in a valid combination.
        let dynamic = c.available & F::DYNAMIC;
        let apicv_xapic = dynamic - F::VIRTUALIZE_X2APIC;
        let on = c
            .with(apicv_xapic)
            .unwrap_or_else(|err| panic!("{}: {err}", e.model));
        assert_fits(
            e.model,
            "proc+dyn",
            on.proc.bits(),
            msrs[&IA32_VMX_TRUE_PROCBASED_CTLS],
        );
        assert_fits(
            e.model,
            "proc2+dyn",
            on.proc2.bits(),
            msrs[&IA32_VMX_PROCBASED_CTLS2],
        );
        assert_fits(
            e.model,
            "pin+dyn",
            on.pin.bits(),
            msrs[&IA32_VMX_TRUE_PINBASED_CTLS],
        );
        assert_fits(
            e.model,
            "exit+dyn",
            on.exit.bits(),
            msrs[&IA32_VMX_TRUE_EXIT_CTLS],
        );
        assert_eq!(on.without(apicv_xapic).unwrap(), c, "{}", e.model);
        let x2 = c.with(dynamic - F::VIRTUALIZE_APIC_ACCESSES).unwrap();
        assert!(x2
            .proc2
            .contains(SecondaryProcControls::VIRTUALIZE_X2APIC_MODE));

        // What is not offered is refused by name.
        let absent = F::DYNAMIC - dynamic;
        if !absent.is_empty() {
            assert_eq!(
                c.with(absent),
                Err(NegotiationError::Unavailable(absent)),
                "{}",
                e.model
            );
        }
    }
}

#[test]
fn without_true_controls_every_model_still_fits_the_plain_msrs() {
    // Hide BASIC bit 55: the plain MSRs (with their default-1 bits) must be used and honoured.
    for e in expected() {
        let mut msrs = models()[e.model].clone();
        *msrs.get_mut(&IA32_VMX_BASIC).unwrap() &= !(1 << 55);
        let (caps, read) = read_caps(e.model, &msrs);
        assert!(!read.contains(&IA32_VMX_TRUE_PROCBASED_CTLS));
        let c = negotiate(&caps).unwrap();
        assert!(!c.true_controls);
        assert_fits(e.model, "pin", c.pin.bits(), msrs[&IA32_VMX_PINBASED_CTLS]);
        assert_fits(
            e.model,
            "proc",
            c.proc.bits(),
            msrs[&IA32_VMX_PROCBASED_CTLS],
        );
        assert_fits(e.model, "exit", c.exit.bits(), msrs[&IA32_VMX_EXIT_CTLS]);
        assert_fits(e.model, "entry", c.entry.bits(), msrs[&IA32_VMX_ENTRY_CTLS]);
        // The default-1 CR3 exits are forced back in.
        assert!(c.proc.contains(PrimaryProcControls::CR3_LOAD_EXITING));
    }
}

// ---- Synthetic MSR values -------------------------------------------------------------

fn skylake() -> VmxCapMsrs {
    let msrs = models()["corei7_skylake_x"].clone();
    VmxCapMsrs::read(|msr| msrs[&msr])
}

#[test]
fn each_required_control_disallowed_is_named() {
    type P = PrimaryProcControls;
    type S = SecondaryProcControls;
    /// How to take a feature away from Skylake's MSR values.
    type TakeAway = fn(&mut VmxCapMsrs);
    let cases: [(Feature, TakeAway); 13] = [
        (Feature::SecondaryControls, |m| {
            clear_may(&mut m.true_procbased, P::ACTIVATE_SECONDARY_CONTROLS.bits())
        }),
        (Feature::Ept, |m| {
            clear_may(&mut m.procbased2, S::ENABLE_EPT.bits())
        }),
        (Feature::UnrestrictedGuest, |m| {
            clear_may(&mut m.procbased2, S::UNRESTRICTED_GUEST.bits())
        }),
        (Feature::ExternalInterruptExiting, |m| {
            clear_may(&mut m.true_pinbased, 1)
        }),
        (Feature::NmiExiting, |m| {
            clear_may(&mut m.true_pinbased, 1 << 3)
        }),
        (Feature::HltExiting, |m| {
            clear_may(&mut m.true_procbased, P::HLT_EXITING.bits())
        }),
        (Feature::Cr8Exiting, |m| {
            clear_may(&mut m.true_procbased, P::CR8_STORE_EXITING.bits())
        }),
        (Feature::IoBitmaps, |m| {
            clear_may(&mut m.true_procbased, P::USE_IO_BITMAPS.bits())
        }),
        (Feature::MsrBitmaps, |m| {
            clear_may(&mut m.true_procbased, P::USE_MSR_BITMAPS.bits())
        }),
        (Feature::HostAddressSpaceSize, |m| {
            clear_may(&mut m.true_exit, 1 << 9)
        }),
        (Feature::SaveGuestEfer, |m| {
            clear_may(&mut m.true_exit, 1 << 20)
        }),
        (Feature::LoadHostEfer, |m| {
            clear_may(&mut m.true_exit, 1 << 21)
        }),
        (Feature::LoadGuestEfer, |m| {
            clear_may(&mut m.true_entry, 1 << 15)
        }),
    ];
    fn clear_may(msr: &mut Option<u64>, bits: u32) {
        let v = msr.as_mut().unwrap();
        *v &= !(u64::from(bits) << 32);
    }
    for (feature, take_away) in cases {
        let mut raw = skylake();
        take_away(&mut raw);
        let err = negotiate(&VmxCaps::from_msrs(&raw)).unwrap_err();
        assert_eq!(err, NegotiationError::MissingFeature(feature));
        let text = err.to_string();
        assert!(
            text.contains(feature.name()) && text.contains("which rhax requires"),
            "{text}"
        );
    }
    // Capability bits outside the control MSRs.
    let mut raw = skylake();
    raw.ept_vpid_cap = Some(raw.ept_vpid_cap.unwrap() & !(1 << 14));
    assert_eq!(
        negotiate(&VmxCaps::from_msrs(&raw)),
        Err(NegotiationError::MissingFeature(Feature::EptWriteBack))
    );
    let mut raw = skylake();
    raw.ept_vpid_cap = Some(raw.ept_vpid_cap.unwrap() & !((1 << 25) | (1 << 26)));
    assert_eq!(
        negotiate(&VmxCaps::from_msrs(&raw)),
        Err(NegotiationError::MissingFeature(Feature::Invept))
    );
    let mut raw = skylake();
    raw.basic = (raw.basic & !(0xF << 50)) | (u64::from(MEMORY_TYPE_UC) << 50);
    assert_eq!(
        negotiate(&VmxCaps::from_msrs(&raw)),
        Err(NegotiationError::MissingFeature(Feature::WriteBackVmcs))
    );
}

#[test]
fn optional_control_disallowed_is_dropped_not_fatal() {
    let mut raw = skylake();
    // No VPID: still negotiates, without VPID.
    raw.procbased2 = Some(raw.procbased2.unwrap() & !(1 << (32 + 5)));
    let c = negotiate(&VmxCaps::from_msrs(&raw)).unwrap();
    assert!(!c.available.contains(OptionalFeatures::VPID));
    assert!(!c.proc2.contains(SecondaryProcControls::ENABLE_VPID));
}

#[test]
fn must_be_one_bits_are_forced_in() {
    let mut raw = skylake();
    // A must-be-one RDTSC exiting (primary bit 12) must appear in the result, and so must the
    // unnamed default-1 bits (pin bits 1, 2, 4).
    let rdtsc = PrimaryProcControls::RDTSC_EXITING.bits();
    raw.true_procbased = Some(raw.true_procbased.unwrap() | u64::from(rdtsc));
    let c = negotiate(&VmxCaps::from_msrs(&raw)).unwrap();
    assert!(c.proc.contains(PrimaryProcControls::RDTSC_EXITING));
    assert_eq!(c.pin.bits() & 0x16, 0x16, "unnamed default-1 pin bits kept");
    c.validate().unwrap();
    // Toggling optional features keeps the forced bits.
    let t = c.with(OptionalFeatures::TPR_SHADOW).unwrap();
    assert!(t.proc.contains(PrimaryProcControls::RDTSC_EXITING));
    assert_eq!(t.proc.bits() & 0x0400_6172, 0x0400_6172);
    let back = t.without(OptionalFeatures::TPR_SHADOW).unwrap();
    assert_eq!(back, c);
}

#[test]
fn forced_controls_rhax_must_keep_off_are_refused() {
    let mut raw = skylake();
    raw.true_exit =
        Some(raw.true_exit.unwrap() | u64::from(ExitControls::ACK_INTERRUPT_ON_EXIT.bits()));
    assert_eq!(
        negotiate(&VmxCaps::from_msrs(&raw)),
        Err(NegotiationError::ForcedOn {
            field: ControlField::Exit,
            bits: u64::from(ExitControls::ACK_INTERRUPT_ON_EXIT.bits())
        })
    );
    // A forced optional control cannot be turned off.
    let mut raw = skylake();
    raw.procbased2 =
        Some(raw.procbased2.unwrap() | u64::from(SecondaryProcControls::ENABLE_VPID.bits()));
    let c = negotiate(&VmxCaps::from_msrs(&raw)).unwrap();
    assert!(matches!(
        c.without(OptionalFeatures::VPID),
        Err(NegotiationError::ForcedOn {
            field: ControlField::SecondaryProc,
            ..
        })
    ));
    // A bit that must be 1 and may not be 1.
    let mut raw = skylake();
    raw.true_pinbased = Some(raw.true_pinbased.unwrap() | (1 << 20));
    assert_eq!(
        negotiate(&VmxCaps::from_msrs(&raw)),
        Err(NegotiationError::InconsistentCapability {
            field: ControlField::PinBased,
            bits: 1 << 20
        })
    );
    // Firmware lock.
    let mut raw = skylake();
    raw.feature_control = 0x1;
    let err = negotiate(&VmxCaps::from_msrs(&raw)).unwrap_err();
    assert_eq!(err, NegotiationError::DisabledByFirmware);
    assert!(err.to_string().contains("disabled by firmware"));
}

/// xorshift64*: deterministic pseudo-random values for the property test.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[test]
fn any_msr_values_give_a_valid_result_or_an_error() {
    let base = skylake();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut accepted = 0;
    let mut flipped_refused = 0;
    for round in 0..20_000 {
        // Half the rounds: fully random values; the others: a few bits of Skylake flipped.
        let msrs = VmxCapMsrs::read(|msr| {
            let b = match msr {
                IA32_FEATURE_CONTROL => base.feature_control,
                IA32_VMX_BASIC => base.basic,
                IA32_VMX_PINBASED_CTLS => base.pinbased,
                IA32_VMX_PROCBASED_CTLS => base.procbased,
                IA32_VMX_EXIT_CTLS => base.exit,
                IA32_VMX_ENTRY_CTLS => base.entry,
                IA32_VMX_MISC => base.misc,
                IA32_VMX_CR0_FIXED0 => base.cr0_fixed0,
                IA32_VMX_CR0_FIXED1 => base.cr0_fixed1,
                IA32_VMX_CR4_FIXED0 => base.cr4_fixed0,
                IA32_VMX_CR4_FIXED1 => base.cr4_fixed1,
                IA32_VMX_VMCS_ENUM => base.vmcs_enum,
                IA32_VMX_TRUE_PINBASED_CTLS => base.true_pinbased.unwrap(),
                IA32_VMX_TRUE_PROCBASED_CTLS => base.true_procbased.unwrap(),
                IA32_VMX_TRUE_EXIT_CTLS => base.true_exit.unwrap(),
                IA32_VMX_TRUE_ENTRY_CTLS => base.true_entry.unwrap(),
                IA32_VMX_PROCBASED_CTLS2 => base.procbased2.unwrap(),
                IA32_VMX_EPT_VPID_CAP => base.ept_vpid_cap.unwrap(),
                IA32_VMX_VMFUNC => base.vmfunc.unwrap(),
                _ => 0,
            };
            if round % 2 == 0 {
                rng.next()
            } else {
                let mut v = b;
                // One MSR in eight gets one bit flipped.
                if rng.next() % 8 == 0 {
                    v ^= 1 << (rng.next() % 64);
                }
                v
            }
        });
        let caps = VmxCaps::from_msrs(&msrs);
        match negotiate(&caps) {
            Ok(c) => {
                accepted += 1;
                for (allowed, value) in [
                    (caps.pin, c.pin.bits()),
                    (caps.proc, c.proc.bits()),
                    (caps.proc2, c.proc2.bits()),
                    (caps.exit, c.exit.bits()),
                    (caps.entry, c.entry.bits()),
                ] {
                    assert!(
                        allowed.accepts(value),
                        "round {round}: {value:#x} vs {allowed:?}"
                    );
                }
                assert!(c.enabled - c.available == OptionalFeatures::empty());
                c.validate().unwrap();
                // Turning every offered dynamic feature on either works or is refused by rule.
                let dynamic = c.available & OptionalFeatures::DYNAMIC;
                match c.with(dynamic - OptionalFeatures::VIRTUALIZE_X2APIC) {
                    Ok(on) => on.validate().unwrap(),
                    Err(NegotiationError::Rule(_) | NegotiationError::ForcedOn { .. }) => {}
                    Err(other) => panic!("round {round}: {other}"),
                }
            }
            Err(err) => {
                if round % 2 == 1 {
                    flipped_refused += 1;
                }
                // Every error has a message.
                assert!(!err.to_string().is_empty());
            }
        }
    }
    // Both outcomes must occur often, or the test proves little.
    assert!(accepted > 3_000, "only {accepted} accepted");
    assert!(flipped_refused > 500, "only {flipped_refused} refused");
    println!("accepted {accepted}, refused after bit flips {flipped_refused}");
}

#[test]
fn dependencies_of_optional_features() {
    use OptionalFeatures as F;
    // Without EPT A/D flags PML cannot log (SDM 29.3.6), and the EPTP leaves bit 6 clear.
    let mut raw = skylake();
    raw.ept_vpid_cap = Some(raw.ept_vpid_cap.unwrap() & !(1 << 21));
    let c = negotiate(&VmxCaps::from_msrs(&raw)).unwrap();
    assert!(!c.available.intersects(F::PML | F::EPT_ACCESSED_DIRTY));
    assert_eq!(c.eptp(0x5000) & (1 << 6), 0);
    // Without INVVPID, VPID is not used (its TLB entries could never be flushed).
    let mut raw = skylake();
    raw.ept_vpid_cap = Some(raw.ept_vpid_cap.unwrap() & !(1 << 32));
    let c = negotiate(&VmxCaps::from_msrs(&raw)).unwrap();
    assert!(!c.available.intersects(F::VPID | F::INVVPID_SINGLE_CONTEXT));
    assert!(!c.proc2.contains(SecondaryProcControls::ENABLE_VPID));
    // Without TPR shadow, none of the APIC virtualizations that need it is offered.
    let mut raw = skylake();
    let tpr = u64::from(PrimaryProcControls::USE_TPR_SHADOW.bits()) << 32;
    raw.true_procbased = Some(raw.true_procbased.unwrap() & !tpr);
    raw.procbased &= !tpr;
    let c = negotiate(&VmxCaps::from_msrs(&raw)).unwrap();
    assert!(!c.available.intersects(
        F::TPR_SHADOW
            | F::APIC_REGISTER_VIRTUALIZATION
            | F::VIRTUAL_INTERRUPT_DELIVERY
            | F::VIRTUALIZE_X2APIC
    ));
    assert!(c.available.contains(F::VIRTUALIZE_APIC_ACCESSES));
    // Without the timer, saving its value is not offered either.
    let mut raw = skylake();
    raw.true_pinbased = Some(raw.true_pinbased.unwrap() & !(1 << (32 + 6)));
    let c = negotiate(&VmxCaps::from_msrs(&raw)).unwrap();
    assert!(!c
        .available
        .intersects(F::PREEMPTION_TIMER | F::SAVE_PREEMPTION_TIMER));
}
