//! The libnrt double's lifecycle against what nrt.h and the runtime guide say, through its raw C
//! symbols (this test binary never makes silica's process-wide `Runtime`, so it may close and
//! re-initialize): visible-core queries before `nrt_init`, an `nrt_close` / `nrt_init` cycle
//! (handles made before the close are gone), `vnc = -1` loading on the first free NeuronCore,
//! and `nrt_load_collectives` needing `NEURON_RT_ROOT_COMM_ID`.

mod common;

use common::{setup, stand_in_neff};
use silica_tensor::{DType, Graph, Program};
use std::ffi::{c_char, c_int, c_void};

type Init = unsafe extern "C" fn(c_int, *const c_char, *const c_char) -> c_int;
type Close = unsafe extern "C" fn();
type Count = unsafe extern "C" fn(*mut u32) -> c_int;
type Load = unsafe extern "C" fn(*const c_void, usize, i32, i32, *mut *mut c_void) -> c_int;
type LoadColl =
    unsafe extern "C" fn(*const c_void, usize, i32, i32, u32, u32, *mut *mut c_void) -> c_int;
type Unload = unsafe extern "C" fn(*mut c_void) -> c_int;

const SUCCESS: c_int = 0;
const INVALID: c_int = 2;
const INVALID_HANDLE: c_int = 3;
const LOAD_NOT_ENOUGH_NC: c_int = 9;
const UNINITIALIZED: c_int = 13;
const CLOSED: c_int = 14;

fn neff() -> Vec<u8> {
    let mut g = Graph::new();
    let x = g.parameter("x", DType::F32, [2]).unwrap();
    let y = g.tanh(x).unwrap();
    let p = Program::new("tanh", g, vec![("y".into(), y)]).unwrap();
    stand_in_neff(&silica_hlo::lower(&p).unwrap().bytes)
}

struct Raw {
    init: Init,
    close: Close,
    visible: Count,
    load: Load,
    load_coll: LoadColl,
    unload: Unload,
    neff: Vec<u8>,
}

impl Raw {
    fn new(d: &common::Double) -> Raw {
        // SAFETY: each symbol has the nrt.h signature its type spells.
        unsafe {
            Raw {
                init: std::mem::transmute::<*const c_void, Init>(d.lookup("nrt_init").unwrap()),
                close: std::mem::transmute::<*const c_void, Close>(d.lookup("nrt_close").unwrap()),
                visible: std::mem::transmute::<*const c_void, Count>(
                    d.lookup("nrt_get_visible_vnc_count").unwrap(),
                ),
                load: std::mem::transmute::<*const c_void, Load>(d.lookup("nrt_load").unwrap()),
                load_coll: std::mem::transmute::<*const c_void, LoadColl>(
                    d.lookup("nrt_load_collectives").unwrap(),
                ),
                unload: std::mem::transmute::<*const c_void, Unload>(
                    d.lookup("nrt_unload").unwrap(),
                ),
                neff: neff(),
            }
        }
    }

    fn init(&self) -> c_int {
        // SAFETY: NRT_FRAMEWORK_TYPE_NO_FW and empty NUL-terminated strings.
        unsafe { (self.init)(1, c"".as_ptr(), c"".as_ptr()) }
    }

    fn visible(&self) -> (c_int, u32) {
        let mut n = u32::MAX;
        // SAFETY: valid out pointer.
        let s = unsafe { (self.visible)(&mut n) };
        (s, n)
    }

    fn load(&self, vnc: i32) -> (c_int, *mut c_void) {
        let mut m = std::ptr::null_mut();
        // SAFETY: the NEFF bytes live for the call; valid out pointer.
        let s = unsafe { (self.load)(self.neff.as_ptr().cast(), self.neff.len(), vnc, -1, &mut m) };
        (s, m)
    }

    fn load_coll(&self, vnc: i32) -> (c_int, *mut c_void) {
        let mut m = std::ptr::null_mut();
        // SAFETY: as for `load`; rank 0 of 1.
        let s = unsafe {
            (self.load_coll)(
                self.neff.as_ptr().cast(),
                self.neff.len(),
                vnc,
                -1,
                0,
                1,
                &mut m,
            )
        };
        (s, m)
    }

    fn unload(&self, m: *mut c_void) -> c_int {
        // SAFETY: the double checks the handle.
        unsafe { (self.unload)(m) }
    }
}

/// One test: the steps share the double's process-wide state and must run in this order.
#[test]
fn lifecycle_follows_the_header_and_guide() {
    let d = setup();
    let raw = Raw::new(d);
    std::env::remove_var("NEURON_RT_ROOT_COMM_ID");

    // "This API can be called before nrt_init()": the count nrt_init would take.
    assert_eq!(raw.visible(), (SUCCESS, 2));
    assert_eq!(raw.load(0).0, UNINITIALIZED);

    assert_eq!(raw.init(), SUCCESS);
    assert_eq!(raw.visible(), (SUCCESS, 2));

    // vnc = -1: "the first free VNC" (no model on it), then none is free.
    let (s, a) = raw.load(-1);
    assert_eq!(s, SUCCESS);
    assert_eq!(d.placement(a).0, 0);
    let (s, b) = raw.load(-1);
    assert_eq!(s, SUCCESS);
    assert_eq!(d.placement(b).0, 1);
    assert_eq!(raw.load(-1).0, LOAD_NOT_ENOUGH_NC);
    // An explicit core may hold several models.
    let (s, c) = raw.load(1);
    assert_eq!(s, SUCCESS);
    assert_eq!(raw.unload(c), SUCCESS);
    assert_eq!(raw.unload(a), SUCCESS);
    let (s, a) = raw.load(-1);
    assert_eq!(s, SUCCESS);
    assert_eq!(d.placement(a).0, 0, "core 0 is free again");
    assert_eq!(raw.unload(a), SUCCESS);

    // NEURON_RT_ROOT_COMM_ID is mandatory for collectives, and must be <ip>:<port>.
    assert_eq!(raw.load_coll(0).0, INVALID);
    for bad in ["", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:http", ":46820"] {
        std::env::set_var("NEURON_RT_ROOT_COMM_ID", bad);
        assert_eq!(raw.load_coll(0).0, INVALID, "{bad:?}");
    }
    std::env::set_var("NEURON_RT_ROOT_COMM_ID", "127.0.0.1:46820");
    let (s, coll) = raw.load_coll(0);
    assert_eq!(s, SUCCESS);
    assert_eq!(d.placement(coll), (0, Some(0), Some(1)));

    // nrt_close "closes all the devices and cleans up the runtime state".
    // SAFETY: no arguments.
    unsafe { (raw.close)() };
    assert_eq!(d.live(), (0, 0, 0, 0), "nothing outlives nrt_close");
    assert_eq!(raw.unload(b), CLOSED);
    assert_eq!(raw.load(0).0, CLOSED);
    assert_eq!(
        raw.visible(),
        (SUCCESS, 2),
        "queries answer after close too"
    );

    // The close / init cycle is supported; old handles are gone, new ones work.
    assert_eq!(raw.init(), SUCCESS);
    assert_eq!(raw.unload(b), INVALID_HANDLE);
    assert_eq!(raw.unload(coll), INVALID_HANDLE);
    let (s, a) = raw.load(-1);
    assert_eq!(s, SUCCESS);
    assert_eq!(d.placement(a).0, 0);
    assert_eq!(raw.unload(a), SUCCESS);
    assert_eq!(d.init_calls(), 2);
}
