//! A scripted fake [`Transport`] for host tests: it records every open, IOCTL and close
//! (device, code, input bytes, and for RUN the tunnel and IO buffer as the driver would see
//! them), and answers from a script of replies.
//!
//! It is also the model for an in-kernel transport: the handle is the [`DevicePath`], and
//! the "driver" owns a real tunnel page and IO buffer per vCPU whose addresses it reports in
//! SETUP_TUNNEL.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use rhax_api::ioctl::HAX_VCPU_IOCTL_SETUP_TUNNEL;
use rhax_api::{Platform, Pod, TunnelInfo};

use crate::{DevicePath, IoctlBuf, IoctlRequest, OsError, Transport};

const PAGE: usize = 4096;

/// One recorded IOCTL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Call {
    pub device: DevicePath,
    pub name: &'static str,
    pub code: u32,
    /// `"none"`, `"in"`, `"out"`, `"inout"`.
    pub kind: &'static str,
    /// What the driver could read: the input buffer (or the in/out buffer before the call).
    pub input: Vec<u8>,
    pub out_len: usize,
    /// Whether a POSIX host would pass the address of a pointer.
    pub pointer_arg: bool,
    /// For a vCPU device: the tunnel (56 bytes) and the IO buffer (64 bytes) at the call.
    pub tunnel: Option<Vec<u8>>,
    pub io: Option<Vec<u8>>,
}

/// What the fake driver does for one IOCTL.
#[derive(Clone, Debug, Default)]
pub(crate) struct Reply {
    pub error: Option<OsError>,
    /// Bytes copied into the output buffer (truncated to its length).
    pub out: Vec<u8>,
    /// The byte count reported; `None` = `out.len()`.
    pub returned: Option<usize>,
    /// Bytes written at the start of the vCPU's tunnel page / IO buffer.
    pub tunnel: Option<Vec<u8>>,
    pub io: Option<Vec<u8>>,
    /// SETUP_TUNNEL: answer with the real pages of this vCPU (`out` is ignored).
    pub real_tunnel: bool,
}

impl Reply {
    pub fn ok() -> Self {
        Self::default()
    }

    pub fn out(bytes: &[u8]) -> Self {
        Self {
            out: bytes.to_vec(),
            ..Self::default()
        }
    }

    pub fn pod<P: Pod>(value: &P) -> Self {
        Self::out(value.as_bytes())
    }

    pub fn err(e: OsError) -> Self {
        Self {
            error: Some(e),
            ..Self::default()
        }
    }

    pub fn tunnel() -> Self {
        Self {
            real_tunnel: true,
            ..Self::default()
        }
    }

    pub fn exit(tunnel: &rhax_api::Tunnel, io: &[u8]) -> Self {
        Self {
            tunnel: Some(tunnel.as_bytes().to_vec()),
            io: Some(io.to_vec()),
            ..Self::default()
        }
    }
}

/// A page allocated with the global allocator and accessed only through raw pointers.
struct Page(*mut u8);

impl Page {
    fn new() -> Self {
        // SAFETY: non-zero size, valid power-of-two alignment.
        let p = unsafe { alloc_zeroed(Layout::from_size_align(PAGE, PAGE).unwrap()) };
        assert!(!p.is_null());
        Self(p)
    }

    fn addr(&self) -> u64 {
        self.0.expose_provenance() as u64
    }

    fn read(&self, len: usize) -> Vec<u8> {
        let mut v = vec![0; len.min(PAGE)];
        // SAFETY: the page holds PAGE bytes; no reference to them exists (the library uses
        // raw pointers and volatile accesses, and is not inside an access now).
        unsafe { core::ptr::copy_nonoverlapping(self.0, v.as_mut_ptr(), v.len()) };
        v
    }

    fn write(&self, bytes: &[u8]) {
        let n = bytes.len().min(PAGE);
        // SAFETY: as in `read`; the library is blocked in RUN (single-threaded test).
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), self.0, n) };
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe { dealloc(self.0, Layout::from_size_align(PAGE, PAGE).unwrap()) };
    }
}

#[derive(Default)]
struct State {
    opens: Vec<DevicePath>,
    closes: Vec<DevicePath>,
    calls: Vec<Call>,
    script: VecDeque<Reply>,
    open_errors: Vec<(DevicePath, OsError)>,
    /// (vm, vcpu) -> (tunnel page, IO page).
    pages: Vec<((u32, u32), Page, Page)>,
}

impl State {
    fn pages(&mut self, vm: u32, vcpu: u32) -> (&Page, &Page) {
        if !self.pages.iter().any(|(k, ..)| *k == (vm, vcpu)) {
            self.pages.push(((vm, vcpu), Page::new(), Page::new()));
        }
        let (_, t, i) = self.pages.iter().find(|(k, ..)| *k == (vm, vcpu)).unwrap();
        (t, i)
    }
}

/// The fake transport; clones share one state.
#[derive(Clone)]
pub(crate) struct Fake {
    platform: Platform,
    state: Rc<RefCell<State>>,
}

impl Fake {
    pub fn new(platform: Platform) -> Self {
        Self {
            platform,
            state: Rc::default(),
        }
    }

    /// Queues replies, answered in order (one per IOCTL).
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.borrow_mut().script.extend(replies);
    }

    pub fn fail_open(&self, path: DevicePath, e: OsError) {
        self.state.borrow_mut().open_errors.push((path, e));
    }

    pub fn calls(&self) -> Vec<Call> {
        self.state.borrow().calls.clone()
    }

    pub fn take_calls(&self) -> Vec<Call> {
        std::mem::take(&mut self.state.borrow_mut().calls)
    }

    pub fn opens(&self) -> Vec<DevicePath> {
        self.state.borrow().opens.clone()
    }

    pub fn closes(&self) -> Vec<DevicePath> {
        self.state.borrow().closes.clone()
    }

    pub fn unused_replies(&self) -> usize {
        self.state.borrow().script.len()
    }

    /// The tunnel page and IO buffer of a vCPU, as the driver sees them now.
    pub fn vcpu_memory(&self, vm: u32, vcpu: u32) -> (Vec<u8>, Vec<u8>) {
        let mut s = self.state.borrow_mut();
        let (t, i) = s.pages(vm, vcpu);
        (t.read(56), i.read(64))
    }
}

// SAFETY: SETUP_TUNNEL answers (with `real_tunnel`) carry the addresses of two pages owned
// by the shared state, which every clone (and so every Vcpu) keeps alive. Scripted raw
// answers are only used by tests that expect the library to refuse them.
unsafe impl Transport for Fake {
    type Handle = DevicePath;

    fn platform(&self) -> Platform {
        self.platform
    }

    fn open(&self, path: DevicePath) -> Result<DevicePath, OsError> {
        let mut s = self.state.borrow_mut();
        s.opens.push(path);
        if let Some(&(_, e)) = s.open_errors.iter().find(|(p, _)| *p == path) {
            return Err(e);
        }
        Ok(path)
    }

    fn ioctl(&self, handle: &DevicePath, mut req: IoctlRequest<'_>) -> Result<usize, OsError> {
        let mut s = self.state.borrow_mut();
        assert_eq!(
            handle.scope(),
            req.def.scope,
            "{} sent to {handle}",
            req.def.name
        );
        let (kind, input) = match &req.buf {
            IoctlBuf::None => ("none", vec![]),
            IoctlBuf::In(b) => ("in", b.to_vec()),
            IoctlBuf::Out(_) => ("out", vec![]),
            IoctlBuf::InOut(b) => ("inout", b.to_vec()),
        };
        let vcpu = match *handle {
            DevicePath::Vcpu { vm, vcpu } => Some((vm, vcpu)),
            _ => None,
        };
        let (tunnel, io) = match vcpu {
            Some((vm, id)) => {
                let (t, i) = s.pages(vm, id);
                (Some(t.read(56)), Some(i.read(64)))
            }
            None => (None, None),
        };
        s.calls.push(Call {
            device: *handle,
            name: req.def.name,
            code: req.code,
            kind,
            input,
            out_len: req.buf.output_len(),
            pointer_arg: req.posix_arg_is_pointer(),
            tunnel,
            io,
        });
        let reply = s
            .script
            .pop_front()
            .unwrap_or_else(|| panic!("no scripted reply for {}", req.def.name));
        if let Some(e) = reply.error {
            return Err(e);
        }
        let mut out = reply.out.clone();
        if reply.real_tunnel {
            assert_eq!(req.def.name, HAX_VCPU_IOCTL_SETUP_TUNNEL.name);
            let (vm, id) = vcpu.expect("SETUP_TUNNEL on a vCPU");
            let (t, i) = s.pages(vm, id);
            let info = TunnelInfo {
                va: t.addr(),
                io_va: i.addr(),
                size: 4096,
                pad: [0; 6],
            };
            out = info.as_bytes().to_vec();
        }
        if let Some((vm, id)) = vcpu {
            let (t, i) = s.pages(vm, id);
            if let Some(b) = &reply.tunnel {
                t.write(b);
            }
            if let Some(b) = &reply.io {
                i.write(b);
            }
        }
        if let Some(dst) = req.buf.output() {
            let n = out.len().min(dst.len());
            dst[..n].copy_from_slice(&out[..n]);
        }
        Ok(reply.returned.unwrap_or(out.len()))
    }

    fn close(&self, handle: DevicePath) {
        self.state.borrow_mut().closes.push(handle);
    }
}
