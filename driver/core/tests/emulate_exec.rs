//! The emulator's semantics per family, over the test Env: each test decodes real encodings
//! with `decode_full`, runs `execute`, and asserts the effects (writes, registers, flags, RIP,
//! `done`) or the exception, against values worked out by hand from the SDM.

mod emulate_env;

use emulate_env::{MmioStop, TestEnv};
use rhax_core::emulate::{
    decode_full, execute, CpuMode, DecodeFailure, Effects, Exception, ExecError, Flags, Op, Rep,
    Seg,
};

const B16: CpuMode = CpuMode::Bits16;
const B32: CpuMode = CpuMode::Bits32;
const B64: CpuMode = CpuMode::Bits64;

fn run(env: &mut TestEnv, mode: CpuMode, bytes: &[u8]) -> Result<Effects, ExecError<MmioStop>> {
    let d = decode_full(bytes, mode).unwrap_or_else(|e| panic!("{bytes:02x?}: {e:?}"));
    execute(&d, env)
}

/// Runs and commits; returns the effects.
fn step(env: &mut TestEnv, mode: CpuMode, bytes: &[u8]) -> Effects {
    let fx = run(env, mode, bytes).unwrap_or_else(|e| panic!("{bytes:02x?}: {e:?}"));
    env.apply(&fx);
    fx
}

fn writes(fx: &Effects) -> Vec<(Seg, u64, Vec<u8>)> {
    fx.writes
        .iter()
        .flatten()
        .map(|w| (w.seg, w.offset, w.bytes().to_vec()))
        .collect()
}

#[test]
fn mov_loads_and_stores() {
    let mut env = TestEnv::new();
    env.gpr[3] = 0x200; // rbx
    env.gpr[1] = 0x1122_3344_5566_7788; // rcx
    env.put(0x208, &0xdead_beef_u32.to_le_bytes());
    // mov [rbx+8], ecx (89 4b 08): 4 bytes at DS:0x208.
    let fx = run(&mut env, B64, &[0x89, 0x4b, 0x08]).unwrap();
    assert_eq!(
        writes(&fx),
        vec![(Seg::Ds, 0x208, vec![0x88, 0x77, 0x66, 0x55])]
    );
    assert_eq!(fx.rip, 0x1003);
    assert!(fx.gpr.iter().all(Option::is_none) && fx.done);
    // mov ecx, [rbx+8] (8b 4b 08): a 32-bit load zero-extends RCX.
    let fx = run(&mut env, B64, &[0x8b, 0x4b, 0x08]).unwrap();
    assert_eq!(fx.gpr[1], Some(0xdead_beef));
    assert!(fx.writes.iter().all(Option::is_none));
    // mov ch, [rbx+8] (8a 6b 08): bits 15:8 only.
    let fx = run(&mut env, B64, &[0x8a, 0x6b, 0x08]).unwrap();
    assert_eq!(fx.gpr[1], Some(0x1122_3344_5566_ef88));
    // mov word [rbx+8], 0x1234 (66 c7 43 08 34 12).
    let fx = run(&mut env, B64, &[0x66, 0xc7, 0x43, 0x08, 0x34, 0x12]).unwrap();
    assert_eq!(writes(&fx), vec![(Seg::Ds, 0x208, vec![0x34, 0x12])]);
    // mov qword [rbx], -2 (48 c7 03 fe ff ff ff): imm32 sign-extended.
    let fx = run(&mut env, B64, &[0x48, 0xc7, 0x03, 0xfe, 0xff, 0xff, 0xff]).unwrap();
    assert_eq!(writes(&fx)[0].2, (-2i64).to_le_bytes().to_vec());
    // mov al, [moffs64] (a0 + 8 bytes): the full 64-bit offset.
    env.put(0x300, &[0x5a]);
    let fx = run(&mut env, B64, &[0xa0, 0, 3, 0, 0, 0, 0, 0, 0]).unwrap();
    assert_eq!(fx.gpr[0], Some(0x5a));
    assert_eq!(fx.rip, 0x1009);
    // movzx / movsx / movsxd.
    env.put(0x400, &[0x80, 0xff, 0xff, 0xff]);
    env.gpr[6] = 0x400; // rsi
    let fx = run(&mut env, B64, &[0x0f, 0xb6, 0x06]).unwrap(); // movzx eax, byte [rsi]
    assert_eq!(fx.gpr[0], Some(0x80));
    let fx = run(&mut env, B64, &[0x48, 0x0f, 0xbe, 0x06]).unwrap(); // movsx rax, byte [rsi]
    assert_eq!(fx.gpr[0], Some(0xffff_ffff_ffff_ff80));
    let fx = run(&mut env, B64, &[0x48, 0x63, 0x06]).unwrap(); // movsxd rax, [rsi]
    assert_eq!(fx.gpr[0], Some(0xffff_ffff_ffff_ff80));
    // movbe eax, [rsi] (0f 38 f0 06): bytes reversed.
    let fx = run(&mut env, B64, &[0x0f, 0x38, 0xf0, 0x06]).unwrap();
    assert_eq!(fx.gpr[0], Some(0x80ff_ffff));
    // movbe [rsi], cx (66 0f 38 f1 0e).
    let fx = run(&mut env, B64, &[0x66, 0x0f, 0x38, 0xf1, 0x0e]).unwrap();
    assert_eq!(writes(&fx)[0].2, vec![0x77, 0x88]);
}

#[test]
fn addressing_segments_and_wraps() {
    let mut env = TestEnv::new();
    // 16-bit: [bp+di-2] defaults to SS and wraps at 64 KiB: bp = 0xfff0, di = 0x20, disp -2
    // -> 0x0e. 8b 43 fe.
    env.gpr[5] = 0xffff_fff0;
    env.gpr[7] = 0x20;
    run(&mut env, B16, &[0x8b, 0x43, 0xfe]).unwrap();
    assert_eq!(env.reads.last(), Some(&(Seg::Ss, 0x0e, 2)));
    // A DS override (3e) beats the SS default outside 64-bit mode.
    run(&mut env, B16, &[0x3e, 0x8b, 0x43, 0xfe]).unwrap();
    assert_eq!(env.reads.last(), Some(&(Seg::Ds, 0x0e, 2)));
    // 32-bit addressing wraps at 4 GiB: [eax+ecx*4+0x10], eax = 0xffff_fff0, ecx = 1.
    env.gpr[0] = 0xffff_fff0;
    env.gpr[1] = 1;
    run(&mut env, B32, &[0x8b, 0x54, 0x88, 0x10]).unwrap();
    assert_eq!(env.reads.last(), Some(&(Seg::Ds, 0x4, 4)));
    // 67 in 64-bit mode: 32-bit address wrap too.
    run(&mut env, B64, &[0x67, 0x8b, 0x54, 0x88, 0x10]).unwrap();
    assert_eq!(env.reads.last(), Some(&(Seg::Ds, 0x4, 4)));
    // 64-bit: ES override ignored, FS honoured; [rsp] defaults to SS.
    env.gpr[4] = 0x500;
    run(&mut env, B64, &[0x26, 0x8b, 0x04, 0x24]).unwrap();
    assert_eq!(env.reads.last(), Some(&(Seg::Ss, 0x500, 4)));
    run(&mut env, B64, &[0x64, 0x8b, 0x04, 0x24]).unwrap();
    assert_eq!(env.reads.last(), Some(&(Seg::Fs, 0x500, 4)));
    // RIP-relative: next RIP + disp32. rip 0x1000, mov eax, [rip+0x100] (8b 05 00 01 00 00).
    run(&mut env, B64, &[0x8b, 0x05, 0x00, 0x01, 0, 0]).unwrap();
    assert_eq!(env.reads.last(), Some(&(Seg::Ds, 0x1106, 4)));
    // In 32-bit mode the same bytes are an absolute disp32.
    run(&mut env, B32, &[0x8b, 0x05, 0x00, 0x01, 0, 0]).unwrap();
    assert_eq!(env.reads.last(), Some(&(Seg::Ds, 0x100, 4)));
    // IP wraps in 16-bit code: 3-byte instruction at 0xfffe -> 0x0001.
    env.rip = 0xfffe;
    let fx = run(&mut env, B16, &[0x8b, 0x43, 0xfe]).unwrap();
    assert_eq!(fx.rip, 0x1);
}

#[test]
fn segment_register_moves() {
    let mut env = TestEnv::new();
    env.selectors[Seg::Gs as usize] = 0x2b;
    env.gpr[3] = 0x100;
    // mov [rbx], gs (8c 2b): 16 bits even with REX.W.
    let fx = run(&mut env, B64, &[0x48, 0x8c, 0x2b]).unwrap();
    assert_eq!(writes(&fx), vec![(Seg::Ds, 0x100, vec![0x2b, 0])]);
    // mov es, [bx] (8e 07) in protected mode: not emulated.
    env.put(0x100, &[0x34, 0x12]);
    assert_eq!(
        run(&mut env, B16, &[0x8e, 0x07]),
        Err(ExecError::Unsupported(Op::MovToSreg))
    );
    // In real mode it is: ES = 0x1234 (the caller sets base 0x12340).
    env.protected = false;
    let fx = run(&mut env, B16, &[0x8e, 0x07]).unwrap();
    assert_eq!(fx.segment, Some((Seg::Es, 0x1234)));
    // MOV CS, r/m and segment numbers 6/7 are #UD.
    assert_eq!(decode_full(&[0x8e, 0x0f], B16), Err(DecodeFailure::Invalid));
    assert_eq!(decode_full(&[0x8c, 0x37], B16), Err(DecodeFailure::Invalid));
}

#[test]
fn rep_movs_steps_down_with_df() {
    let mut env = TestEnv::new();
    env.put(0x100, &[1, 2, 3, 4]);
    // std; rep movsb from [rsi=0x103] to [rdi=0x203], rcx = 4 (f3 a4).
    env.rflags |= Flags::DF;
    env.gpr[6] = 0x103;
    env.gpr[7] = 0x203;
    env.gpr[1] = 4;
    let mut iterations = 0;
    loop {
        let fx = step(&mut env, B64, &[0xf3, 0xa4]);
        iterations += 1;
        if fx.done {
            assert_eq!(fx.rip, 0x1002);
            break;
        }
        // RIP stays on the instruction while iterations are left.
        assert_eq!(fx.rip, 0x1000);
    }
    assert_eq!(iterations, 4);
    assert_eq!(env.get(0x200, 4), &[1, 2, 3, 4]);
    assert_eq!((env.gpr[6], env.gpr[7], env.gpr[1]), (0xff, 0x1ff, 0));
    // RCX = 0: no access at all, done, RIP advanced.
    env.reads.clear();
    let fx = run(&mut env, B64, &[0xf3, 0xa4]).unwrap();
    assert!(fx.done && env.reads.is_empty() && fx.writes.iter().all(Option::is_none));
    assert_eq!(fx.rip, 0x1004);
}

#[test]
fn rep_stos_16bit_wraps_di_and_counts_cx() {
    let mut env = TestEnv::new();
    env.stack32 = false;
    // rep stosw with 16-bit addressing: DI = 0xfffe wraps to 0 and 2; CX counts, the upper
    // bits of RDI and RCX stay (f3 ab). ES base 0 -> writes at 0xfffe, 0, 2.
    env.gpr[7] = 0xaaaa_0000_0000_fffe;
    env.gpr[1] = 0xbbbb_0000_0001_0003; // CX = 3, bits above stay.
    env.gpr[0] = 0x4142;
    let mut offsets = Vec::new();
    loop {
        let fx = step(&mut env, B16, &[0xf3, 0xab]);
        offsets.push(writes(&fx)[0].1);
        assert_eq!(writes(&fx)[0].0, Seg::Es);
        if fx.done {
            break;
        }
    }
    assert_eq!(offsets, vec![0xfffe, 0, 2]);
    assert_eq!(env.gpr[7], 0xaaaa_0000_0000_0004);
    assert_eq!(env.gpr[1], 0xbbbb_0000_0001_0000);
    assert_eq!(env.get(0, 4), &[0x42, 0x41, 0x42, 0x41]);
}

#[test]
fn repe_cmps_and_repne_scas_stop_on_zf() {
    let mut env = TestEnv::new();
    env.put(0x100, b"abcX");
    env.put(0x200, b"abcY");
    env.gpr[6] = 0x100;
    env.gpr[7] = 0x200;
    env.gpr[1] = 10;
    // repe cmpsb (f3 a6): stops after the 4th compare (mismatch), RCX = 6.
    let mut n = 0;
    loop {
        let fx = step(&mut env, B64, &[0xf3, 0xa6]);
        n += 1;
        if fx.done {
            break;
        }
    }
    assert_eq!((n, env.gpr[1]), (4, 6));
    assert_eq!(env.rflags & Flags::ZF, 0);
    // repne scasb (f2 ae) for 'c' from 0x200: stops on the match (3rd), ZF = 1.
    env.gpr[7] = 0x200;
    env.gpr[0] = u64::from(b'c');
    env.gpr[1] = 10;
    let mut n = 0;
    loop {
        let fx = step(&mut env, B64, &[0xf2, 0xae]);
        n += 1;
        if fx.done {
            break;
        }
    }
    assert_eq!((n, env.gpr[1], env.gpr[7]), (3, 7, 0x203));
    assert_ne!(env.rflags & Flags::ZF, 0);
    // lodsd (ad) with DF = 0: EAX zero-extended, RSI += 4.
    env.gpr[6] = 0x100;
    let fx = step(&mut env, B64, &[0xad]);
    assert_eq!(fx.gpr[0], Some(u64::from(u32::from_le_bytes(*b"abcX"))));
    assert_eq!(env.gpr[6], 0x104);
    let d = decode_full(&[0xf2, 0xa4], B64).unwrap();
    assert_eq!(d.rep, Rep::Rep); // F2 on MOVS repeats like F3.
}

#[test]
fn bt_register_offset_reaches_outside_the_operand() {
    let mut env = TestEnv::new();
    env.gpr[3] = 0x100;
    // bts word [rbx], cx with cx = -1: bit 15 of the word at 0x100 - 2 (66 0f ab 0b).
    env.gpr[1] = 0xffff;
    let fx = run(&mut env, B64, &[0x66, 0x0f, 0xab, 0x0b]).unwrap();
    assert_eq!(writes(&fx), vec![(Seg::Ds, 0xfe, vec![0, 0x80])]);
    assert_eq!(fx.rflags & Flags::CF, 0);
    // bt dword [rbx], ecx with ecx = 35: bit 3 of the dword at 0x104 (0f a3 0b).
    env.put(0x104, &[0x08, 0, 0, 0]);
    env.gpr[1] = 35;
    let fx = run(&mut env, B64, &[0x0f, 0xa3, 0x0b]).unwrap();
    assert_eq!(env.reads.last(), Some(&(Seg::Ds, 0x104, 4)));
    assert_ne!(fx.rflags & Flags::CF, 0);
    assert!(fx.writes.iter().all(Option::is_none));
    // rcx = -65 (qword): the qword at 0x100 - 16, bit 63.
    env.gpr[1] = (-65i64) as u64;
    let fx = run(&mut env, B64, &[0x48, 0x0f, 0xb3, 0x0b]).unwrap(); // btr
    assert_eq!(env.reads.last(), Some(&(Seg::Ds, 0xf0, 8)));
    assert_eq!(writes(&fx)[0].1, 0xf0);
    // The immediate form takes the offset modulo the size: bt dword [rbx], 35 -> bit 3 of
    // 0x100 (0f ba 23 23).
    run(&mut env, B64, &[0x0f, 0xba, 0x23, 35]).unwrap();
    assert_eq!(env.reads.last(), Some(&(Seg::Ds, 0x100, 4)));
}

#[test]
fn push_and_pop_memory() {
    let mut env = TestEnv::new();
    env.gpr[4] = 0x800;
    env.put(0x800, &0x1111_2222_3333_4444u64.to_le_bytes());
    // pop qword [rsp+8] (8f 44 24 08): reads SS:0x800, RSP = 0x808, writes [0x808+8].
    let fx = run(&mut env, B64, &[0x8f, 0x44, 0x24, 0x08]).unwrap();
    assert_eq!(env.reads.last(), Some(&(Seg::Ss, 0x800, 8)));
    assert_eq!(fx.gpr[4], Some(0x808));
    assert_eq!(
        writes(&fx),
        vec![(
            Seg::Ss,
            0x810,
            0x1111_2222_3333_4444u64.to_le_bytes().to_vec()
        )]
    );
    // push qword [rbx] (ff 33): RSP - 8.
    env.gpr[3] = 0x800;
    let fx = run(&mut env, B64, &[0xff, 0x33]).unwrap();
    assert_eq!(fx.gpr[4], Some(0x7f8));
    assert_eq!(writes(&fx)[0].0, Seg::Ss);
    assert_eq!(writes(&fx)[0].1, 0x7f8);
    // 16-bit stack: SP = 0 wraps to 0xfffe, the bits above SP stay (ff 37 = push [bx]).
    env.stack32 = false;
    env.gpr[4] = 0x1234_0000;
    let fx = run(&mut env, B16, &[0xff, 0x37]).unwrap();
    assert_eq!(fx.gpr[4], Some(0x1234_fffe));
    assert_eq!((writes(&fx)[0].1, writes(&fx)[0].2.len()), (0xfffe, 2));
}

#[test]
fn cmov_reads_even_when_false() {
    let mut env = TestEnv::new();
    env.gpr[3] = 0x100;
    env.gpr[0] = 0xffff_ffff_0000_0001;
    env.put(0x100, &[9, 0, 0, 0]);
    // cmove eax, [rbx] with ZF = 0 (0f 44 03): read, RAX upper half cleared, EAX kept.
    let fx = run(&mut env, B64, &[0x0f, 0x44, 0x03]).unwrap();
    assert_eq!(env.reads.len(), 1);
    assert_eq!(fx.gpr[0], Some(1));
    // 16-bit cmove with ZF = 0: nothing changes.
    let fx = run(&mut env, B64, &[0x66, 0x0f, 0x44, 0x03]).unwrap();
    assert_eq!(fx.gpr[0], None);
    // ZF = 1: loaded.
    env.rflags |= Flags::ZF;
    let fx = run(&mut env, B64, &[0x0f, 0x44, 0x03]).unwrap();
    assert_eq!(fx.gpr[0], Some(9));
    // setne byte [rbx] (0f 95 03) with ZF = 1 -> 0.
    let fx = run(&mut env, B64, &[0x0f, 0x95, 0x03]).unwrap();
    assert_eq!(writes(&fx), vec![(Seg::Ds, 0x100, vec![0])]);
}

#[test]
fn xchg_and_cmpxchg() {
    let mut env = TestEnv::new();
    env.gpr[3] = 0x100;
    env.gpr[1] = 0xaaaa_bbbb;
    env.put(0x100, &[1, 0, 0, 0]);
    // xchg [rbx], ecx (87 0b).
    let fx = run(&mut env, B64, &[0x87, 0x0b]).unwrap();
    assert_eq!(fx.gpr[1], Some(1));
    assert_eq!(writes(&fx)[0].2, vec![0xbb, 0xbb, 0xaa, 0xaa]);
    // cmpxchg [rbx], ecx (0f b1 0b), EAX = 1 = memory: store ECX, RAX untouched.
    env.gpr[0] = 0xffff_ffff_0000_0001;
    let fx = run(&mut env, B64, &[0x0f, 0xb1, 0x0b]).unwrap();
    assert_eq!(fx.gpr[0], None);
    assert_ne!(fx.rflags & Flags::ZF, 0);
    assert_eq!(writes(&fx)[0].2, vec![0xbb, 0xbb, 0xaa, 0xaa]);
    // EAX = 2: memory written back unchanged, EAX loaded (RAX zero-extended).
    env.gpr[0] = 0xffff_ffff_0000_0002;
    let fx = run(&mut env, B64, &[0x0f, 0xb1, 0x0b]).unwrap();
    assert_eq!(fx.gpr[0], Some(1));
    assert_eq!(fx.rflags & Flags::ZF, 0);
    assert_eq!(writes(&fx)[0].2, vec![1, 0, 0, 0]);
}

#[test]
fn lock_is_checked() {
    // lock add [rbx], ecx (f0 01 0b): fine; lock mov, lock cmp, lock bt: #UD.
    let d = decode_full(&[0xf0, 0x01, 0x0b], B64).unwrap();
    assert!(d.lock);
    for bytes in [
        &[0xf0, 0x89, 0x0b][..],
        &[0xf0, 0x39, 0x0b],
        &[0xf0, 0x0f, 0xa3, 0x0b],
        &[0xf0, 0x85, 0x0b],
        &[0xf0, 0x8b, 0x0b],
    ] {
        assert_eq!(
            decode_full(bytes, B64),
            Err(DecodeFailure::InvalidLock),
            "{bytes:02x?}"
        );
    }
    // A register form has no memory operand.
    assert_eq!(
        decode_full(&[0xf0, 0x01, 0xc8], B64),
        Err(DecodeFailure::RegisterOperand)
    );
    // xchg needs no LOCK but accepts it.
    assert!(decode_full(&[0xf0, 0x87, 0x0b], B64).unwrap().lock);
}

#[test]
fn sse_and_avx_moves() {
    let mut env = TestEnv::new();
    env.gpr[3] = 0x100;
    let data: Vec<u8> = (1..=32).collect();
    env.put(0x100, &data);
    let lo = u128::from_le_bytes(data[..16].try_into().unwrap());
    let hi = u128::from_le_bytes(data[16..].try_into().unwrap());
    // movdqu xmm9, [rbx] (f3 44 0f 6f 0b): legacy SSE keeps YMM's upper half.
    let fx = run(&mut env, B64, &[0xf3, 0x44, 0x0f, 0x6f, 0x0b]).unwrap();
    let x = fx.xmm.unwrap();
    assert_eq!((x.n, x.value, x.high), (9, lo, None));
    // vmovdqu ymm1, [rbx] (c5 fe 6f 0b): all 32 bytes.
    let fx = run(&mut env, B64, &[0xc5, 0xfe, 0x6f, 0x0b]).unwrap();
    let x = fx.xmm.unwrap();
    assert_eq!((x.n, x.value, x.high), (1, lo, Some(hi)));
    // vmovups xmm1, [rbx] (c5 f8 10 0b): VEX.128 zeroes the upper half.
    let fx = run(&mut env, B64, &[0xc5, 0xf8, 0x10, 0x0b]).unwrap();
    assert_eq!(fx.xmm.unwrap().high, Some(0));
    // movd xmm2, [rbx] (66 0f 6e 13): 4 bytes, zero-extended.
    let fx = run(&mut env, B64, &[0x66, 0x0f, 0x6e, 0x13]).unwrap();
    assert_eq!(fx.xmm.unwrap().value, 0x0403_0201);
    // movq [rbx], xmm3 (66 0f d6 1b): 8 bytes of XMM3.
    env.xmm[3] = 0x1122_3344_5566_7788_99aa_bbcc_ddee_ff00;
    let fx = run(&mut env, B64, &[0x66, 0x0f, 0xd6, 0x1b]).unwrap();
    assert_eq!(
        writes(&fx)[0].2,
        0x99aa_bbcc_ddee_ff00u64.to_le_bytes().to_vec()
    );
    // vmovdqa [rbx], ymm3 (c5 fd 7f 1b): 32 bytes, aligned.
    env.ymm_high.as_mut().unwrap()[3] = 7;
    let fx = run(&mut env, B64, &[0xc5, 0xfd, 0x7f, 0x1b]).unwrap();
    assert_eq!(writes(&fx)[0].2.len(), 32);
    assert_eq!(writes(&fx)[0].2[16], 7);
    // Misaligned: movdqa xmm0, [rbx+8] (66 0f 6f 43 08) #GP(0), movups is fine; vmovdqa
    // ymm needs 32-byte alignment ([rbx+16]: c5 fd 6f 43 10).
    assert_eq!(
        run(&mut env, B64, &[0x66, 0x0f, 0x6f, 0x43, 0x08]),
        Err(ExecError::Exception(Exception::GP0))
    );
    assert!(run(&mut env, B64, &[0x0f, 0x10, 0x43, 0x08]).is_ok());
    assert_eq!(
        run(&mut env, B64, &[0xc5, 0xfd, 0x6f, 0x43, 0x10]),
        Err(ExecError::Exception(Exception::GP0))
    );
    // The alignment is of the linear address: a DS base of 8 makes [rbx+8] aligned.
    env.bases[Seg::Ds as usize] = 8;
    assert!(run(&mut env, B64, &[0x66, 0x0f, 0x6f, 0x43, 0x08]).is_ok());
    env.bases[Seg::Ds as usize] = 0;
    // VEX in real mode: #UD.
    env.protected = false;
    assert_eq!(
        run(&mut env, B64, &[0xc5, 0xf8, 0x10, 0x0b]),
        Err(ExecError::Exception(Exception::UD))
    );
    env.protected = true;
    // No AVX state: VEX.256 is #UD, before any access.
    env.ymm_high = None;
    env.reads.clear();
    assert_eq!(
        run(&mut env, B64, &[0xc5, 0xfe, 0x6f, 0x0b]),
        Err(ExecError::Exception(Exception::UD))
    );
    assert!(env.reads.is_empty());
    // A VEX with vvvv != 1111 is #UD at decode (c5 f6 6f 0b: vvvv = 1110).
    assert_eq!(
        decode_full(&[0xc5, 0xf6, 0x6f, 0x0b], B64),
        Err(DecodeFailure::Invalid)
    );
}

#[test]
fn a_stop_or_fault_leaves_nothing_done() {
    let mut env = TestEnv::new();
    env.gpr[3] = 0x100;
    env.gpr[1] = 5;
    env.mmio = Some((0x100, 0x200));
    // add [rbx], ecx on MMIO: the read stops; nothing is produced.
    assert_eq!(
        run(&mut env, B64, &[0x01, 0x0b]),
        Err(ExecError::Env(MmioStop(0x100)))
    );
    // movs from MMIO: the stop comes before any write check.
    env.gpr[6] = 0x180;
    env.gpr[7] = 0x400;
    env.checks.clear();
    assert_eq!(
        run(&mut env, B64, &[0xa4]),
        Err(ExecError::Env(MmioStop(0x180)))
    );
    assert!(env.checks.is_empty());
    // A read-modify-write to a read-only page faults on the write check before reading
    // (a #PF that reports a write).
    env.mmio = None;
    env.read_only = Some((0x100, 0x200));
    env.reads.clear();
    let r = run(&mut env, B64, &[0x01, 0x0b]);
    assert!(matches!(
        r,
        Err(ExecError::Exception(Exception { vector: 14, .. }))
    ));
    assert!(env.reads.is_empty());
    // CMP only reads: no fault.
    assert!(run(&mut env, B64, &[0x39, 0x0b]).is_ok());
}

/// Random bytes through `decode_full` and `execute` with random registers (small half the
/// time, so that accesses land in the test memory): never a panic (debug builds trap every
/// overflow), and the effects keep their invariants.
#[test]
fn random_instructions_keep_the_invariants() {
    let mut s = 0x0123_4567_89ab_cdefu64;
    let mut next = move || {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        s.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let (mut executed, mut faulted) = (0u32, 0u32);
    for k in 0..200_000u32 {
        let mut bytes = [0u8; 16];
        for chunk in bytes.chunks_mut(8) {
            chunk.copy_from_slice(&next().to_le_bytes());
        }
        let mode = [B16, B32, B64][(k % 3) as usize];
        let Ok(d) = decode_full(&bytes, mode) else {
            continue;
        };
        assert!((1..=15).contains(&d.length) && (1..=32).contains(&d.size));
        let mut env = TestEnv::new();
        let small = next() & 1 == 0;
        for r in env.gpr.iter_mut() {
            *r = if small { next() & 0x7fff } else { next() };
        }
        env.rflags = 0x2 | (next() & (Flags::STATUS | Flags::DF));
        env.rip = next() & 0xffff;
        env.stack32 = next() & 1 == 0;
        env.protected = next() & 1 == 0;
        for x in env.xmm.iter_mut() {
            *x = u128::from(next());
        }
        match execute(&d, &mut env) {
            Ok(fx) => {
                executed += 1;
                for w in fx.writes.iter().flatten() {
                    assert!((1..=32).contains(&w.len));
                    assert!(w.offset <= u64::MAX >> (64 - 8 * u32::from(d.address_size)));
                }
                // Only the status flags change.
                assert_eq!((fx.rflags ^ env.rflags) & !Flags::STATUS, 0, "{bytes:02x?}");
                if fx.done {
                    assert_ne!(fx.rip, env.rip, "{bytes:02x?}");
                } else {
                    assert!(d.rep != Rep::None && fx.rip == env.rip, "{bytes:02x?}");
                }
            }
            Err(_) => faulted += 1,
        }
    }
    println!("emulate_exec: {executed} executed, {faulted} refused or faulted");
    assert!(executed > 1000);
}
