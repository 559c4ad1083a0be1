//! A minimal NFSv3 client over ONC RPC on TCP (RFC 5531, 1813, 1833): enough to look a
//! name up in an export's top folder, to remove it, and to list that folder with each
//! entry's type and size, which no packaged tool does without a kernel mount. Portmapper
//! `GETPORT` finds the MOUNT and NFS services, `MNT` gives the export's root handle, then
//! `LOOKUP`, `REMOVE` or `READDIRPLUS` (`READDIR` and a `LOOKUP` per name where the server
//! has no `READDIRPLUS`); `UMNT` ends it. Credentials are AUTH_SYS as the daemon's own uid
//! and gid (root on a node), as QEMU's libnfs sends them.
//!
//! Callers bound every exchange with a deadline; a reply is read to its length, capped, so
//! a confused server cannot make it allocate without end, and a listing is capped in
//! entries and pages, so one cannot make it loop without end either.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PMAP_PROG: u32 = 100_000;
const MOUNT_PROG: u32 = 100_005;
const NFS_PROG: u32 = 100_003;
const IPPROTO_TCP: u32 = 6;
const NFS3ERR_NOENT: u32 = 2;
const NFS3ERR_BAD_COOKIE: u32 = 10003;
const NFS3ERR_NOTSUPP: u32 = 10004;
/// `ftype3` of a regular file.
pub const NF3REG: u32 = 1;
/// Replies here are small (handles, statuses, a page of a listing, which asks for at most
/// `LIST_MAXCOUNT`); anything larger is not what was asked for.
const MAX_REPLY: usize = 64 * 1024;
/// What a listing asks per page: bytes of names and cookies (`dircount`), and of the whole
/// reply (`maxcount`).
const LIST_DIRCOUNT: u32 = 8 * 1024;
const LIST_MAXCOUNT: u32 = 32 * 1024;
/// A folder with more entries than this is refused rather than listed (a share holds a
/// disk and a seed per instance, and the base images).
pub const MAX_ENTRIES: usize = 1_000_000;
/// How often a listing starts over when the folder changes under it (`BAD_COOKIE`).
const LIST_RESTARTS: u32 = 3;

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
    fn u64(self, v: u64) -> Self {
        self.u32((v >> 32) as u32).u32(v as u32)
    }
    /// Fixed-length opaque data (a cookie verifier): no length, padded.
    fn fixed(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self.0.resize(self.0.len() + (4 - b.len() % 4) % 4, 0);
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
    fn u64(&mut self) -> Result<u64, RpcError> {
        Ok(u64::from(self.u32()?) << 32 | u64::from(self.u32()?))
    }
    fn bool(&mut self) -> Result<bool, RpcError> {
        match self.u32()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(RpcError::Protocol(format!("bad boolean {v}"))),
        }
    }
    fn skip(&mut self, n: usize) -> Result<(), RpcError> {
        if self.0.len() < n {
            return Err(RpcError::Protocol("short reply".into()));
        }
        self.0 = &self.0[n..];
        Ok(())
    }
    /// `fixed` read back: `N` bytes.
    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], RpcError> {
        let (head, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or_else(|| RpcError::Protocol("short reply".into()))?;
        self.0 = rest;
        Ok(*head)
    }
    /// A `post_op_attr`: the object's type and size, when the server sent its attributes.
    fn post_op_attr(&mut self) -> Result<Option<Attr>, RpcError> {
        if !self.bool()? {
            return Ok(None);
        }
        let kind = self.u32()?;
        self.skip(4 * 4)?; // mode, nlink, uid, gid
        let size = self.u64()?;
        // used, rdev, fsid, fileid, atime, mtime, ctime
        self.skip(8 + 8 + 8 + 8 + 3 * 8)?;
        Ok(Some(Attr { kind, size }))
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

/// An object's type (`ftype3`: `NF3REG` for a regular file) and size in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub kind: u32,
    pub size: u64,
}

/// An entry of the export's top folder (`.` and `..` included, as the server sends them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The name as the server sent it; bytes that are not UTF-8 become U+FFFD, which no
    /// name kvmfs accepts (`storage::check_name`).
    pub name: String,
    /// `None` when the server could not say (the entry went while it was listed).
    pub attr: Option<Attr>,
}

/// One mount of an export: the root handle from MOUNT, and a connection to its NFS service.
struct Session {
    mnt: Conn,
    nfs: Conn,
    export: String,
    root: Vec<u8>,
}

impl Session {
    async fn open(host: &str, export: &str) -> Result<Session, RpcError> {
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
        let nfs = match Conn::open(host, nfs_port, "nfsd").await {
            Ok(c) => c,
            Err(e) => {
                Self::unmount(&mut mnt, export).await;
                return Err(e);
            }
        };
        Ok(Session {
            mnt,
            nfs,
            export: export.to_string(),
            root,
        })
    }

    /// The server's list of mounts is only advice; a failed UMNT changes nothing.
    async fn unmount(mnt: &mut Conn, export: &str) {
        let _ = mnt
            .call(MOUNT_PROG, 3, 3, Xdr::default().opaque(export.as_bytes()))
            .await;
    }

    async fn close(mut self) {
        Self::unmount(&mut self.mnt, &self.export).await;
    }

    /// `LOOKUP` or `REMOVE` of `name` in the root: whether it was there, and (for a
    /// lookup) its attributes when the server sent them.
    async fn name_op(&mut self, name: &str, op: Op) -> Result<Option<Option<Attr>>, RpcError> {
        let proc_ = match op {
            Op::Lookup => 3,
            Op::Remove => 12,
        };
        let res = self
            .nfs
            .call(
                NFS_PROG,
                3,
                proc_,
                Xdr::default().opaque(&self.root).opaque(name.as_bytes()),
            )
            .await?;
        let mut r = Reader(&res);
        match r.u32()? {
            0 if op == Op::Lookup => {
                let _handle = r.opaque()?;
                Ok(Some(r.post_op_attr()?))
            }
            0 => Ok(Some(None)),
            NFS3ERR_NOENT => Ok(None),
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

    /// Every entry of the root, page by page (`READDIRPLUS`, or `READDIR` if `plus` is
    /// false); starts over when the folder changed under the listing (`BAD_COOKIE`).
    async fn list(&mut self, plus: bool) -> Result<Vec<Entry>, RpcError> {
        let mut restarts = 0;
        'listing: loop {
            let mut out: Vec<Entry> = Vec::new();
            let (mut cookie, mut verf) = (0u64, [0u8; 8]);
            loop {
                let mut args = Xdr::default().opaque(&self.root).u64(cookie).fixed(&verf);
                // READDIRPLUS takes two counts (names and cookies; the whole reply),
                // READDIR only the second.
                if plus {
                    args = args.u32(LIST_DIRCOUNT);
                }
                let args = args.u32(LIST_MAXCOUNT);
                let proc_ = if plus { 17 } else { 16 };
                let res = self.nfs.call(NFS_PROG, 3, proc_, args).await?;
                let mut r = Reader(&res);
                let status = r.u32()?;
                if status == NFS3ERR_BAD_COOKIE && restarts < LIST_RESTARTS {
                    restarts += 1;
                    continue 'listing;
                }
                if status != 0 {
                    return Err(RpcError::Nfs {
                        op: if plus { "readdirplus" } else { "readdir" },
                        name: ".".into(),
                        status,
                    });
                }
                let _dir = r.post_op_attr()?;
                verf = r.fixed::<8>()?;
                let before = out.len();
                let eof = read_entries(&mut r, plus, &mut out, &mut cookie)?;
                if out.len() > MAX_ENTRIES {
                    return Err(RpcError::Protocol(format!(
                        "more than {MAX_ENTRIES} entries in {}",
                        self.export
                    )));
                }
                if eof {
                    return Ok(out);
                }
                if out.len() == before {
                    // Not at the end, yet nothing to go on from: it would never end.
                    return Err(RpcError::Protocol(format!(
                        "an empty page before the end of {}",
                        self.export
                    )));
                }
            }
        }
    }
}

/// Reads the entries of one page of a listing (`dirlist3` or `dirlistplus3`) into `out`,
/// `cookie` becoming the last one's; returns whether it was the last page.
fn read_entries(
    r: &mut Reader<'_>,
    plus: bool,
    out: &mut Vec<Entry>,
    cookie: &mut u64,
) -> Result<bool, RpcError> {
    while r.bool()? {
        let _fileid = r.u64()?;
        let name = String::from_utf8_lossy(&r.opaque()?).into_owned();
        *cookie = r.u64()?;
        let attr = if plus {
            let attr = r.post_op_attr()?;
            if r.bool()? {
                let _handle = r.opaque()?;
            }
            attr
        } else {
            None
        };
        out.push(Entry { name, attr });
        if out.len() > MAX_ENTRIES {
            return Ok(false);
        }
    }
    r.bool()
}

/// Looks `name` up in (or removes it from) the top folder of `export` on `host`: `true` if
/// it was there.
pub async fn name_op(host: &str, export: &str, name: &str, op: Op) -> Result<bool, RpcError> {
    let mut s = Session::open(host, export).await?;
    let result = s.name_op(name, op).await;
    s.close().await;
    result.map(|found| found.is_some())
}

/// Lists the top folder of `export` on `host`: every entry with its type and size, in the
/// server's order. Entries whose attributes the listing did not bring (a server without
/// `READDIRPLUS`, or one that left them out) are looked up one by one, if their names are
/// ones kvmfs could use (`storage::check_name`).
pub async fn list(host: &str, export: &str) -> Result<Vec<Entry>, RpcError> {
    let mut s = Session::open(host, export).await?;
    let result = async {
        let mut entries = match s.list(true).await {
            Err(RpcError::Nfs {
                status: NFS3ERR_NOTSUPP,
                ..
            }) => s.list(false).await?,
            r => r?,
        };
        // Only names kvmfs could use are worth a round trip (not `.`, `..`, hidden files).
        for e in entries
            .iter_mut()
            .filter(|e| e.attr.is_none() && super::check_name(&e.name).is_ok())
        {
            // Gone since it was listed: left without attributes, as the server would.
            e.attr = s.name_op(&e.name, Op::Lookup).await?.flatten();
        }
        Ok(entries)
    }
    .await;
    s.close().await;
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

    /// A `fattr3` of type `kind` and `size`, the rest zero.
    fn fattr(x: Xdr, kind: u32, size: u64) -> Xdr {
        let x = x.u32(kind).u32(0o644).u32(1).u32(0).u32(0).u64(size);
        // used, rdev, fsid, fileid, atime, mtime, ctime
        (0..7).fold(x, |x, _| x.u64(0))
    }

    #[test]
    fn a_readdirplus_page_is_read_with_sizes() {
        // Two entries: one with attributes and a handle, one with neither; then eof.
        let x = Xdr::default().u32(1).u64(11).opaque(b"base.qcow2").u64(5);
        let x = fattr(x.u32(1), NF3REG, 123_456_789).u32(1).opaque(&[7; 28]);
        let x = x.u32(1).u64(12).opaque(b"gone").u64(9).u32(0).u32(0);
        let x = x.u32(0).u32(1);
        let (mut out, mut cookie) = (Vec::new(), 0);
        let eof = read_entries(&mut Reader(&x.0), true, &mut out, &mut cookie).unwrap();
        assert!(eof);
        assert_eq!(cookie, 9);
        assert_eq!(
            out,
            [
                Entry {
                    name: "base.qcow2".into(),
                    attr: Some(Attr {
                        kind: NF3REG,
                        size: 123_456_789
                    }),
                },
                Entry {
                    name: "gone".into(),
                    attr: None
                },
            ]
        );
        // READDIR's entries carry neither; a page that is not the last says so.
        let x = Xdr::default()
            .u32(1)
            .u64(3)
            .opaque(b"a")
            .u64(4)
            .u32(0)
            .u32(0);
        let (mut out, mut cookie) = (Vec::new(), 0);
        assert!(!read_entries(&mut Reader(&x.0), false, &mut out, &mut cookie).unwrap());
        assert_eq!(out[0].attr, None);
        assert_eq!(cookie, 4);
        // A page cut short is an error, not a panic.
        let cut = &x.0[..x.0.len() - 6];
        assert!(read_entries(&mut Reader(cut), false, &mut Vec::new(), &mut 0).is_err());
    }
}
