//! The Go runtime family: goroutine creation, so that a goroutine created
//! while a span is open on its creator inherits that span as its parent.

use crate::event::EventHeader;

/// `EventHeader::kind` of a [`GoroutineCreated`] record.
pub const KIND_GOROUTINE_CREATED: u32 = 25;

/// Site of the probe on `runtime.newproc`'s entry (the creator).
pub const SITE_NEWPROC: u32 = 0;
/// Site of a probe on a `CALL runtime.runqput` in `runtime.newproc.func1`
/// (the created goroutine, just made).
pub const SITE_RUNQPUT: u32 = 1;

/// A goroutine was created. `header.goid` is the creator's goroutine id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoroutineCreated {
    pub header: EventHeader,
    /// The new goroutine's id.
    pub child_goid: u64,
}

const _: () = assert!(core::mem::size_of::<GoroutineCreated>() == 40);

/// One entry of the `RUNTIME_CONFIG` array map, by target slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// Non-zero once the agent has filled this slot.
    pub active: u32,
    pub _pad: u32,
    /// `runtime.g.goid`.
    pub g_goid: u64,
}

const _: () = assert!(core::mem::size_of::<RuntimeConfig>() == 16);
