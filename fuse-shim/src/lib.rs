//! The part of b2fs-shim that other tools reuse: reading the kernel's mount table (the tests and the benchmark
//! find and clean up mounts with it).

pub mod mountinfo;
