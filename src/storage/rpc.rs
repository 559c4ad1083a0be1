//! A minimal NFSv3 client over ONC RPC on TCP (RFC 5531, 1813, 1833): enough to look a
//! name up in an export's top folder and to remove it, which no packaged tool does without
//! a kernel mount. Portmapper `GETPORT` finds the MOUNT and NFS services, `MNT` gives the
//! export's root handle, then `LOOKUP` or `REMOVE`; `UMNT` ends it. Credentials are
//! AUTH_SYS as the daemon's own uid and gid (root on a node), as QEMU's libnfs sends them.
//!
//! Callers bound every exchange with a deadline; a reply is read to its length, capped, so
//! a confused server cannot make it allocate without end.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PMAP_PROG: u32 = 100_000;
const MOUNT_PROG: u32 = 100_005;
const NFS_PROG: u32 = 100_003;
const IPPROTO_TCP: u32 = 6;
const NFS3ERR_NOENT: u32 = 2;
/// Replies here are small (handles, statuses); anything larger is not what was asked for.
const MAX_REPLY: usize = 64 * 1024;

/// What went wrong talking to the server.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("cannot reach {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Protocol(String),
    #[error("mount of {export} refused (status {status})")]
    Mount { export: String, status: u32 },
    #[error("{op} {name} failed (NFS status {status})")]
    Nfs {
        op: &'static str,
        name: String,
        status: u32,
    },
}

/// XDR encoding of a call's arguments.
#[derive(Default)]
struct Xdr(Vec<u8>);

impl Xdr {
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn opaque(mut self, b: &[u8]) -> Self {
        self = self.u32(u32::try_from(b.len()).unwrap_or(u32::MAX));
        self.0.extend_from_slice(b);
        self.0.resize(self.0.len() + (4 - b.len() % 4) % 4, 0);
        self
    }
}

/// XDR decoding of a reply.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn u32(&mut self) -> Result<u32, RpcError> {
        let (head, rest) = self
            .0
            .split_first_chunk::<4>()
            .ok_or_else(|| RpcError::Protocol("short reply".into()))?;
        self.0 = rest;
        Ok(u32::from_be_bytes(*head))
    }
    fn opaque(&mut self) -> Result<Vec<u8>, RpcError> {
        let len = self.u32()? as usize;
        let padded = len + (4 - len % 4) % 4;
        if self.0.len() < padded {
            return Err(RpcError::Protocol("short reply".into()));
        }
        let v = self.0[..len].to_vec();
        self.0 = &self.0[padded..];
        Ok(v)
    }
}

/// One TCP connection to one RPC service.
struct Conn {
    stream: TcpStream,
    xid: u32,
    what: String,
}

impl Conn {
    async fn open(host: &str, port: u16, what: &str) -> Result<Conn, RpcError> {
        let what = format!("{what} on {host}:{port}");
        let io = |source| RpcError::Io {
            what: what.clone(),
            source,
        };
        let stream = TcpStream::connect((host, port)).await.map_err(io)?;
        stream.set_nodelay(true).map_err(io)?;
        let xid = std::process::id().wrapping_mul(2_654_435_761) ^ u32::from(port);
        Ok(Conn { stream, xid, what })
    }

    /// Sends one call and returns the bytes of its results.
    async fn call(
        &mut self,
        prog: u32,
        vers: u32,
        proc_: u32,
        args: Xdr,
    ) -> Result<Vec<u8>, RpcError> {
        self.xid = self.xid.wrapping_add(1);
        // SAFETY: getuid and getgid cannot fail and touch no memory of ours.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let cred = Xdr::default()
            .u32(0) // stamp
            .opaque(b"kvmfs")
            .u32(uid)
            .u32(gid)
            .u32(0); // no supplementary groups
        let mut msg = Xdr::default()
            .u32(self.xid)
            .u32(0) // CALL
            .u32(2) // RPC version
            .u32(prog)
            .u32(vers)
            .u32(proc_)
            .u32(1) // AUTH_SYS
            .opaque(&cred.0)
            .u32(0) // verifier AUTH_NONE
            .u32(0)
            .0;
        msg.extend_from_slice(&args.0);
        let len =
            u32::try_from(msg.len()).map_err(|_| RpcError::Protocol("call too long".into()))?;
        let mut frame = (0x8000_0000 | len).to_be_bytes().to_vec();
        frame.extend_from_slice(&msg);
        let what = self.what.clone();
        let io = |source| RpcError::Io {
            what: what.clone(),
            source,
        };
        self.stream.write_all(&frame).await.map_err(io)?;
        let mut reply = Vec::new();
        loop {
            let mark = self.stream.read_u32().await.map_err(io)?;
            let n = (mark & 0x7fff_ffff) as usize;
            if reply.len() + n > MAX_REPLY {
                return Err(RpcError::Protocol(format!("{what}: reply too long")));
            }
            let at = reply.len();
            reply.resize(at + n, 0);
            self.stream.read_exact(&mut reply[at..]).await.map_err(io)?;
            if mark & 0x8000_0000 != 0 {
                break;
            }
        }
        let mut r = Reader(&reply);
        if r.u32()? != self.xid || r.u32()? != 1 {
            return Err(RpcError::Protocol(format!(
                "{what}: not a reply to the call"
            )));
        }
        if r.u32()? != 0 {
            return Err(RpcError::Protocol(format!(
                "{what}: call denied (authentication)"
            )));
        }
        let _verifier_flavor = r.u32()?;
        let _verifier = r.opaque()?;
        match r.u32()? {
            0 => Ok(r.0.to_vec()),
            s => Err(RpcError::Protocol(format!(
                "{what}: call not accepted (status {s}: program, version or procedure unknown)"
            ))),
        }
    }
}

/// Asks the portmapper on `host` for the TCP port of `prog` version `vers`.
async fn port_of(host: &str, prog: u32, vers: u32) -> Result<u16, RpcError> {
    let mut c = Conn::open(host, 111, "portmapper").await?;
    let res = c
        .call(
            PMAP_PROG,
            2,
            3,
            Xdr::default().u32(prog).u32(vers).u32(IPPROTO_TCP).u32(0),
        )
        .await?;
    let port = Reader(&res).u32()?;
    u16::try_from(port).ok().filter(|p| *p != 0).ok_or_else(|| {
        RpcError::Protocol(format!("{host}: program {prog} v{vers} is not registered"))
    })
}

/// What to do with a name in the export's top folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Lookup,
    Remove,
}

/// Looks `name` up in (or removes it from) the top folder of `export` on `host`: `true` if
/// it was there.
pub async fn name_op(host: &str, export: &str, name: &str, op: Op) -> Result<bool, RpcError> {
    let mount_port = port_of(host, MOUNT_PROG, 3).await?;
    let nfs_port = port_of(host, NFS_PROG, 3).await?;
    let mut mnt = Conn::open(host, mount_port, "mountd").await?;
    let res = mnt
        .call(MOUNT_PROG, 3, 1, Xdr::default().opaque(export.as_bytes()))
        .await?;
    let mut r = Reader(&res);
    let status = r.u32()?;
    if status != 0 {
        return Err(RpcError::Mount {
            export: export.to_string(),
            status,
        });
    }
    let root = r.opaque()?;
    let result = async {
        let mut nfs = Conn::open(host, nfs_port, "nfsd").await?;
        let proc_ = match op {
            Op::Lookup => 3,
            Op::Remove => 12,
        };
        let res = nfs
            .call(
                NFS_PROG,
                3,
                proc_,
                Xdr::default().opaque(&root).opaque(name.as_bytes()),
            )
            .await?;
        match Reader(&res).u32()? {
            0 => Ok(true),
            NFS3ERR_NOENT => Ok(false),
            status => Err(RpcError::Nfs {
                op: match op {
                    Op::Lookup => "lookup",
                    Op::Remove => "remove",
                },
                name: name.to_string(),
                status,
            }),
        }
    }
    .await;
    // The server's list of mounts is only advice; a failed UMNT changes nothing.
    let _ = mnt
        .call(MOUNT_PROG, 3, 3, Xdr::default().opaque(export.as_bytes()))
        .await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xdr_pads_and_reads_back() {
        let x = Xdr::default().u32(7).opaque(b"abcde").u32(9);
        assert_eq!(x.0.len(), 4 + 4 + 8 + 4);
        let mut r = Reader(&x.0);
        assert_eq!(r.u32().unwrap(), 7);
        assert_eq!(r.opaque().unwrap(), b"abcde");
        assert_eq!(r.u32().unwrap(), 9);
        assert!(r.u32().is_err());
        // A length past the end is an error, not a panic.
        let bad = Xdr::default().u32(1000);
        assert!(Reader(&bad.0).opaque().is_err());
    }
}
