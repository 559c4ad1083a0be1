//! Randomness from the kernel (`getrandom(2)`): incarnation ids, worker ids, MAC addresses,
//! nonces. One place, so every random value kvmfs makes comes from the same source.

/// Fills `buf` with random bytes from the kernel.
pub fn fill(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: `rest` is a valid, writable buffer of `rest.len()` bytes.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += n as usize;
    }
    Ok(())
}

/// `bytes` random bytes as lowercase hex (twice as many characters).
pub fn hex(bytes: usize) -> std::io::Result<String> {
    let mut b = vec![0u8; bytes];
    fill(&mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_ids_differ_and_have_their_length() {
        let (a, b) = (super::hex(8).unwrap(), super::hex(8).unwrap());
        assert_eq!(a.len(), 16);
        assert_ne!(a, b);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
    }
}
