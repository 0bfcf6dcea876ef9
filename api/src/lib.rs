//! The HAXM user/kernel ABI, frozen byte for byte.
#![no_std]
