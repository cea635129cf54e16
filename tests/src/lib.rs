//! Test support for b2fs: the B2 emulator ([`emulator`]), used by the end-to-end tests, the
//! benchmark and the `b2-emulator` binary; mounting `b2fs-shim` ([`mount`]); real Chia
//! provers ([`chia`]).

pub mod chia;
pub mod emulator;
pub mod mount;
