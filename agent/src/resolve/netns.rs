//! Entering a network namespace on a dedicated thread and coming back.
//!
//! `setns(2)` changes the namespace of the calling thread only, so code that must run inside a
//! pod's namespace (attaching a TC program, creating a socket) runs on a fresh OS thread that
//! enters the namespace, does its work and ends. Pooled threads (tokio's blocking pool) are never
//! used for this: they would stay in the pod's namespace. A socket keeps the namespace it was
//! created in, so the agent can use it from any thread afterwards.
//!
//! Identity: a namespace is known by its kernel cookie (`SO_NETNS_COOKIE`, Linux 5.14+: never
//! reused) where the kernel has it, else by its namespace file's device and inode (the same
//! pair `ip netns identify` and `stat -L /proc/PID/ns/net` use). An inode number can be reused
//! once its namespace is gone; the agent holds a handle on every namespace it tracks (see
//! [`Netns`]), so a tracked namespace's number is never reused while it is tracked. Which one a
//! process uses is decided once, by trying the socket option ([`identity_kind`]).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use std::sync::atomic::{AtomicU8, Ordering};

/// Linux `SO_NETNS_COOKIE` (since 5.14); not yet exported by every libc crate version.
const SO_NETNS_COOKIE: libc::c_int = 71;
/// Linux `SIOCGSKNS` (since 4.9): an fd of the network namespace a socket belongs to.
const SIOCGSKNS: libc::c_ulong = 0x894C;
/// Marks an inode-derived identity, so it can never equal a kernel cookie (a counter from 1).
const INODE_ID_FLAG: u64 = 1 << 63;

/// How namespaces are identified in this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdentityKind {
    /// The kernel's netns cookie (`SO_NETNS_COOKIE`, Linux 5.14+).
    Cookie,
    /// The namespace file's device and inode (any kernel), flagged with the top bit.
    Inode,
}

impl std::fmt::Display for IdentityKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IdentityKind::Cookie => "netns cookie (SO_NETNS_COOKIE)",
            IdentityKind::Inode => "namespace file device and inode",
        })
    }
}

const KIND_UNKNOWN: u8 = 0;
const KIND_COOKIE: u8 = 1;
const KIND_INODE: u8 = 2;
/// Decided on first use; `LOUPE_NETNS_IDENTITY=inode` forces the inode form (tests, old kernels).
static KIND: AtomicU8 = AtomicU8::new(KIND_UNKNOWN);

/// How this process identifies namespaces: the cookie when the kernel reports one for a socket
/// (probed once, on the agent's own namespace), else the namespace file's inode.
pub fn identity_kind() -> IdentityKind {
    match KIND.load(Ordering::Relaxed) {
        KIND_COOKIE => return IdentityKind::Cookie,
        KIND_INODE => return IdentityKind::Inode,
        _ => {}
    }
    let forced = std::env::var("LOUPE_NETNS_IDENTITY").as_deref() == Ok("inode");
    let kind = if forced {
        IdentityKind::Inode
    } else {
        match std::net::UdpSocket::bind("127.0.0.1:0").and_then(|s| kernel_cookie(&s)) {
            Ok(_) => IdentityKind::Cookie,
            Err(e) => {
                log::info!("no netns cookie for sockets ({e}; SO_NETNS_COOKIE needs Linux 5.14): namespaces are identified by their file's device and inode");
                IdentityKind::Inode
            }
        }
    };
    let code = match kind {
        IdentityKind::Cookie => KIND_COOKIE,
        IdentityKind::Inode => KIND_INODE,
    };
    KIND.store(code, Ordering::Relaxed);
    kind
}

/// The inode-derived identity of a namespace file: device and inode, top bit set.
fn inode_identity(file: &File) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let meta = file.metadata()?;
    // nsfs inode numbers are 32-bit (proc_inum); the device is nsfs's single anonymous device.
    let dev = meta.dev() & 0x7fff_ffff;
    Ok(INODE_ID_FLAG | (dev << 32) | (meta.ino() & 0xffff_ffff))
}

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot open network namespace {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a network namespace")]
    NotNetns { path: PathBuf },
    #[error("cannot enter network namespace {path}: {source}")]
    Enter {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the cookie of network namespace {path}: {source}")]
    Cookie {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the thread working in network namespace {path} panicked")]
    Panicked { path: PathBuf },
}

/// An open handle on a network namespace. Holding it keeps the namespace alive.
#[derive(Debug)]
pub struct Netns {
    file: File,
    path: PathBuf,
}

impl Netns {
    /// Opens a namespace file such as `/var/run/netns/cart` or `/proc/1234/ns/net`.
    pub fn open(path: &Path) -> Result<Self, NetnsError> {
        let file = File::open(path).map_err(|source| NetnsError::Open {
            path: path.to_owned(),
            source,
        })?;
        let netns = Self {
            file,
            path: path.to_owned(),
        };
        netns.check_is_netns()?;
        Ok(netns)
    }

    /// The network namespace of process `pid`.
    pub fn of_pid(pid: u32) -> Result<Self, NetnsError> {
        Self::open(Path::new(&format!("/proc/{pid}/ns/net")))
    }

    /// The agent's own network namespace (that of its main thread).
    pub fn current() -> Result<Self, NetnsError> {
        Self::open(Path::new("/proc/self/ns/net"))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Another handle on the same namespace, for moving into a thread.
    pub fn try_clone(&self) -> Result<Self, NetnsError> {
        let file = self.file.try_clone().map_err(|source| NetnsError::Open {
            path: self.path.clone(),
            source,
        })?;
        Ok(Self {
            file,
            path: self.path.clone(),
        })
    }

    fn check_is_netns(&self) -> Result<(), NetnsError> {
        // NS_GET_NSTYPE would be exact; a namespace file's device is nsfs and `setns` with
        // CLONE_NEWNET rejects other types anyway, so check the inode type cheaply here.
        use std::os::unix::fs::FileTypeExt;
        let meta = self.file.metadata().map_err(|source| NetnsError::Open {
            path: self.path.clone(),
            source,
        })?;
        let ft = meta.file_type();
        if ft.is_dir() || ft.is_fifo() || ft.is_socket() || ft.is_block_device() {
            return Err(NetnsError::NotNetns {
                path: self.path.clone(),
            });
        }
        Ok(())
    }

    /// Runs `f` on a new thread inside this namespace and returns its result.
    pub fn run<T, F>(&self, f: F) -> Result<T, NetnsError>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        std::thread::scope(|scope| {
            let handle = scope.spawn(|| {
                self.enter()?;
                Ok(f())
            });
            handle.join().map_err(|_| NetnsError::Panicked {
                path: self.path.clone(),
            })?
        })
    }

    /// Like [`Netns::run`], for async callers: the work runs on its own OS thread and the caller's
    /// task waits without blocking the runtime.
    pub async fn run_async<T, F>(&self, f: F) -> Result<T, NetnsError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let netns = self.try_clone()?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let path = self.path.clone();
        std::thread::Builder::new()
            .name("loupe-netns".into())
            .spawn(move || {
                let result = netns.enter().map(|()| f());
                let _ = tx.send(result);
            })
            .map_err(|source| NetnsError::Enter {
                path: path.clone(),
                source,
            })?;
        rx.await.map_err(|_| NetnsError::Panicked { path })?
    }

    /// Moves the calling thread into this namespace. Only for threads made for that purpose.
    fn enter(&self) -> Result<(), NetnsError> {
        // SAFETY: setns takes a valid open file descriptor and a namespace type; it changes only
        // the calling thread, which is a thread created for this namespace alone.
        let rc = unsafe { libc::setns(self.file.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            return Err(NetnsError::Enter {
                path: self.path.clone(),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// This namespace's identity (see [`identity_kind`]): the kernel's cookie, as
    /// `bpf_get_netns_cookie` reports it, or the namespace file's device and inode.
    pub fn cookie(&self) -> Result<u64, NetnsError> {
        let cookie_err = |source| NetnsError::Cookie {
            path: self.path.clone(),
            source,
        };
        if identity_kind() == IdentityKind::Inode {
            return inode_identity(&self.file).map_err(cookie_err);
        }
        self.run(|| {
            let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
            kernel_cookie(&socket)
        })?
        .map_err(cookie_err)
    }
}

/// The identity (see [`identity_kind`]) of the namespace a socket was created in.
pub fn socket_netns_cookie(socket: &impl AsRawFd) -> std::io::Result<u64> {
    if identity_kind() == IdentityKind::Cookie {
        return kernel_cookie(socket);
    }
    // SAFETY: SIOCGSKNS takes no argument and returns a new fd (or -1); the fd is a socket.
    let fd = unsafe { libc::ioctl(socket.as_raw_fd(), SIOCGSKNS as _) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the ioctl returned a new descriptor that nothing else owns.
    let file = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    inode_identity(&file)
}

/// `SO_NETNS_COOKIE` of a socket (Linux 5.14+; ENOPROTOOPT before).
fn kernel_cookie(socket: &impl AsRawFd) -> std::io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: the pointers are to a live u64 and its length; the fd is a valid socket.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}

/// Scratch namespaces for the agent's own tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// A new, empty network namespace with `lo` up. It lives as long as the handle: nothing to
    /// clean up, even when the test fails.
    pub fn scratch() -> Netns {
        std::thread::spawn(|| {
            // SAFETY: unshare only changes this short-lived thread's namespace.
            assert_eq!(
                unsafe { libc::unshare(libc::CLONE_NEWNET) },
                0,
                "unshare: {}",
                std::io::Error::last_os_error()
            );
            set_loopback_up();
            Netns::open(Path::new("/proc/thread-self/ns/net")).expect("open new netns")
        })
        .join()
        .expect("scratch namespace thread")
    }

    fn set_loopback_up() {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0");
        // A UDP bind works with lo down; the socket is only an ioctl handle.
        let socket = socket.expect("ioctl socket");
        // SAFETY: ifreq is plain data; the name is NUL-terminated; the fd is a valid socket.
        unsafe {
            let mut req: libc::ifreq = std::mem::zeroed();
            req.ifr_name[0] = b'l' as libc::c_char;
            req.ifr_name[1] = b'o' as libc::c_char;
            assert_eq!(
                libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req),
                0
            );
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            assert_eq!(
                libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &mut req),
                0
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_namespace_has_its_own_loopback() {
        if !loupe_testkit::root::require(
            "scratch_namespace_has_its_own_loopback",
            "network namespaces",
        ) {
            return;
        }
        let ns = testing::scratch();
        assert_ne!(
            ns.cookie().unwrap(),
            Netns::current().unwrap().cookie().unwrap()
        );
        let listener = ns
            .run(|| std::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap()
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        // The host's loopback does not reach the namespace's.
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
        assert!(ns
            .run(move || std::net::TcpStream::connect(("127.0.0.1", port)))
            .unwrap()
            .is_ok());
    }

    #[test]
    fn own_namespace_has_a_stable_cookie() {
        let own = Netns::current().expect("open own netns");
        let a = own.cookie().expect("cookie");
        let b = own.cookie().expect("cookie");
        assert_eq!(a, b);
        assert_ne!(a, 0);
    }

    #[test]
    fn inode_identity_matches_for_handle_and_socket_and_differs_between_namespaces() {
        if !loupe_testkit::root::require(
            "inode_identity_matches_for_handle_and_socket",
            "network namespaces",
        ) {
            return;
        }
        let own = Netns::current().expect("own netns");
        let ns = testing::scratch();
        let own_id = inode_identity(&own.file).expect("own identity");
        let ns_id = inode_identity(&ns.file).expect("scratch identity");
        assert_ne!(own_id, ns_id);
        assert_ne!(own_id & INODE_ID_FLAG, 0, "flagged as inode-derived");
        // Through SIOCGSKNS, a socket made in the namespace leads to the same identity.
        let socket = ns
            .run(|| std::net::UdpSocket::bind("127.0.0.1:0"))
            .unwrap()
            .unwrap();
        // SAFETY: as in socket_netns_cookie.
        let fd = unsafe { libc::ioctl(socket.as_raw_fd(), SIOCGSKNS as _) };
        assert!(fd >= 0, "SIOCGSKNS: {}", std::io::Error::last_os_error());
        // SAFETY: a fresh descriptor from the ioctl.
        let file = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        assert_eq!(inode_identity(&file).unwrap(), ns_id);
        // Another handle on the same namespace (a path) gives the same identity.
        let again = Netns::open(Path::new(&format!("/proc/self/fd/{}", ns.file.as_raw_fd())))
            .expect("reopen");
        assert_eq!(inode_identity(&again.file).unwrap(), ns_id);
    }

    #[test]
    fn identity_kind_is_stable_and_matches_the_kernel() {
        let kind = identity_kind();
        assert_eq!(identity_kind(), kind);
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        if std::env::var("LOUPE_NETNS_IDENTITY").is_err() {
            assert_eq!(kind == IdentityKind::Cookie, kernel_cookie(&socket).is_ok());
        }
        let own = Netns::current().unwrap();
        assert_eq!(socket_netns_cookie(&socket).unwrap(), own.cookie().unwrap());
    }

    #[test]
    fn opening_a_missing_namespace_names_the_path() {
        let err = Netns::open(Path::new("/nonexistent/netns")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/netns"), "{err}");
    }

    #[test]
    fn a_directory_is_not_a_namespace() {
        let err = Netns::open(Path::new("/proc")).unwrap_err();
        assert!(matches!(err, NetnsError::NotNetns { .. }), "{err}");
    }
}
