//! Plain types shared by the eBPF programs and the agent. `no_std`, `repr(C)`, no pointers.
#![no_std]
