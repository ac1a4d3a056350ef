//! Host-side build of this crate is empty: it exists so intercept-ctl can name it as a build
//! dependency (Cargo then rebuilds the object when this crate changes). The programs are in main.rs.
#![no_std]
