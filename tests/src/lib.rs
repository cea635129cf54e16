//! Test support for b2fs: the B2 emulator ([`emulator`]), used by the end-to-end tests, the
//! benchmark and the `b2-emulator` binary.

pub mod emulator;
