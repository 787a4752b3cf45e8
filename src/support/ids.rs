//! User and group ids from the system databases (`getpwnam_r`,
//! `getgrnam_r`, `getgrgid_r`): for ADD's `--chown` on a node, the server's
//! `--socket-group`, and the CLI's explanation of a refused control socket.
//! These calls may block on a name service; callers make them where that
//! is acceptable (the server only at start). And who is at the other end of
//! a UNIX socket (`SO_PEERCRED`), which never blocks.

use std::ffi::{CStr, CString};

/// The user id of the process at the other end of a UNIX socket (the
/// kernel's word for it, which the peer cannot forge).
pub fn peer_uid(stream: &impl std::os::fd::AsRawFd) -> Option<u32> {
    // SAFETY: a zeroed plain-old-data struct.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED writes at most `len` bytes into `cred`.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(cred.uid)
}

/// Bytes for the strings a database entry points into.
const BUF: usize = 1 << 16;

/// A user's id, by name or number.
pub fn user_id(user: &str) -> Option<u32> {
    if let Ok(n) = user.parse() {
        return Some(n);
    }
    let name = CString::new(user).ok()?;
    let mut buf = vec![0 as libc::c_char; BUF];
    // SAFETY: zeroed plain-old-data, filled by getpwnam_r, which writes only
    // into it and into `buf`, whose length we pass; the result pointer is
    // checked before use.
    unsafe {
        let mut pw: libc::passwd = std::mem::zeroed();
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwnam_r(
            name.as_ptr(),
            &mut pw,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        );
        (rc == 0 && !found.is_null()).then_some(pw.pw_uid)
    }
}

/// A group's id, by name or number.
pub fn group_id(group: &str) -> Option<u32> {
    if let Ok(n) = group.parse() {
        return Some(n);
    }
    let name = CString::new(group).ok()?;
    let mut buf = vec![0 as libc::c_char; BUF];
    // SAFETY: as in `user_id`, with getgrnam_r.
    unsafe {
        let mut gr: libc::group = std::mem::zeroed();
        let mut found: *mut libc::group = std::ptr::null_mut();
        let rc = libc::getgrnam_r(
            name.as_ptr(),
            &mut gr,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        );
        (rc == 0 && !found.is_null()).then_some(gr.gr_gid)
    }
}

/// A group's name from its id.
pub fn group_name(gid: u32) -> Option<String> {
    let mut buf = vec![0 as libc::c_char; BUF];
    // SAFETY: as in `user_id`, with getgrgid_r; on success gr_name points to
    // a NUL-terminated string inside `buf`, copied before `buf` is freed.
    unsafe {
        let mut gr: libc::group = std::mem::zeroed();
        let mut found: *mut libc::group = std::ptr::null_mut();
        let rc = libc::getgrgid_r(gid, &mut gr, buf.as_mut_ptr(), buf.len(), &mut found);
        if rc != 0 || found.is_null() {
            return None;
        }
        Some(CStr::from_ptr(gr.gr_name).to_string_lossy().into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers() {
        assert_eq!(user_id("root"), Some(0));
        assert_eq!(user_id("1234"), Some(1234));
        assert_eq!(group_id("0"), Some(0));
        assert_eq!(group_name(0).as_deref(), Some("root"));
        assert_eq!(group_id(&group_name(0).unwrap()), Some(0));
        assert_eq!(user_id("no-such-user-here"), None);
        assert_eq!(group_id("no-such-group-here"), None);
        assert_eq!(user_id("a\0b"), None);
    }
}
