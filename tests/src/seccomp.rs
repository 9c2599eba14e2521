//! A seccomp filter that fails every bpf(2) call with EPERM, as the default seccomp profiles of
//! container runtimes do for containers that are not privileged: a real reason, made by the
//! real kernel, for loupe's probe not to load, while everything else (setns, sockets) still works.

use std::os::unix::process::CommandExt;
use std::process::Command;

/// `AUDIT_ARCH_*` of this build (include/uapi/linux/audit.h): the filter only judges this ABI's
/// syscall numbers.
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;

/// Offsets in `struct seccomp_data`.
const NR_OFFSET: u32 = 0;
const ARCH_OFFSET: u32 = 4;

/// Makes the command's process (from exec on) get EPERM for every bpf(2) call.
pub fn deny_bpf(command: &mut Command) {
    // SAFETY: `install` runs in the child between fork and exec; it allocates nothing and only
    // makes prctl(2) calls on a filter on its own stack, which is async-signal-safe.
    unsafe {
        command.pre_exec(install);
    }
}

fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump_if_equal(k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    }
}

fn install() -> std::io::Result<()> {
    let load_word = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
    let ret = libc::BPF_RET | libc::BPF_K;
    let mut filter = [
        stmt(load_word, ARCH_OFFSET),
        // Another ABI: allow (jump to the last instruction).
        jump_if_equal(AUDIT_ARCH, 0, 3),
        stmt(load_word, NR_OFFSET),
        jump_if_equal(libc::SYS_bpf as u32, 0, 1),
        stmt(ret, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
        stmt(ret, libc::SECCOMP_RET_ALLOW),
    ];
    let program = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: PR_SET_NO_NEW_PRIVS takes plain integers.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `program` points to `filter`, both alive for the call; the kernel copies them.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &program as *const libc::sock_fprog,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
