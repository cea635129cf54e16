//! Test support for b2fs: the B2 emulator ([`emulator`]), used by the end-to-end tests, the
//! benchmark and the `b2-emulator` binary; mounting `b2fs-shim` ([`mount`]); real Chia
//! provers ([`chia`]); a real HAProxy on the shipped config ([`haproxy`]); and the benchmark behind
//! `b2fs-bench` ([`bench`]).

pub mod bench;
pub mod chia;
pub mod emulator;
pub mod haproxy;
pub mod mount;
pub mod siblings;
