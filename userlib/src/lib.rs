//! rhax: the safe user-mode API over the HAXM IOCTL interface.
#![cfg_attr(not(any(test, feature = "std")), no_std)]
