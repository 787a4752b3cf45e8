//! CurveZMQ key material: key pairs and their files, Z85 text, fingerprints,
//! and what a `--shared-key` derives (the server's key pair and the proof a
//! client gives that it knows the shared key).
//!
//! Files: one key pair per file, two lines of Z85 (`public ...`, `secret
//! ...`), mode 0600, written atomically (temporary file, fsync, rename, fsync
//! of the directory). A file that others may read is refused, as ssh does.
//!
//! Cryptography comes from libsodium (the same library libzmq's CURVE uses):
//! Argon2id turns a shared key into key material, X25519 makes a public key
//! from a secret, HMAC-SHA-256 makes and checks enrolment proofs.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Once;

use libsodium_sys as sodium;

/// Bytes in a CURVE key.
pub const KEY_LEN: usize = 32;
/// Bytes in an enrolment proof (HMAC-SHA-256).
pub const PROOF_LEN: usize = 32;
/// A shared key shorter than this is easy to guess from a captured
/// handshake; the daemons warn about it.
pub const WEAK_SHARED_KEY: usize = 16;

/// Said at every start of either daemon with `--curve off`.
pub const UNAUTHENTICATED: &str = "--curve off: this cluster is UNAUTHENTICATED and UNENCRYPTED: anyone who can reach the ports can enroll as any node, read every job (ARG values included), send fake results, and impersonate the server to the nodes; use it only in a lab";

/// Fixed Argon2id salt: both sides must derive the same keys from the shared
/// key alone. It separates our derivation from any other use of the key.
const SHARED_KEY_SALT: &[u8; 16] = b"director:curve:1";
/// Argon2id cost, libsodium's "interactive" level in passes with a smaller
/// memory bound: every client start pays it once, and a fleet may start at
/// once on small machines.
const PWHASH_OPS: u64 = 3;
const PWHASH_MEM: usize = 16 << 20;
/// What an enrolment proof signs, before the two public keys.
const PROOF_LABEL: &[u8] = b"director enrolment v1";

fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        // SAFETY: sodium_init is thread-safe and idempotent; a negative result
        // means no usable random source, which nothing here can work without.
        let rc = unsafe { sodium::sodium_init() };
        assert!(rc >= 0, "libsodium could not initialise");
    });
}

/// A CURVE public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; KEY_LEN]);

impl PublicKey {
    /// Parse a key from its 40-character Z85 form.
    pub fn from_z85(text: &str) -> Result<PublicKey, String> {
        let bytes = z85_decode(text.trim())?;
        let key: [u8; KEY_LEN] = bytes.try_into().map_err(|b: Vec<u8>| {
            format!(
                "a CURVE key is 40 characters of Z85, got {}",
                b.len() * 5 / 4
            )
        })?;
        Ok(PublicKey(key))
    }

    /// From raw bytes, as the ZAP handler receives them.
    pub fn from_bytes(bytes: &[u8]) -> Option<PublicKey> {
        bytes.try_into().ok().map(PublicKey)
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The 40-character Z85 form, as `--server-key` and `--show-key` use.
    pub fn z85(&self) -> String {
        z85_encode(&self.0)
    }

    /// What operators compare: SHA-256 of the key, first 16 bytes as hex
    /// pairs (`3f:a2:...`). Clients log theirs at start; `--list-keys` shows
    /// the same.
    pub fn fingerprint(&self) -> String {
        let digest = sha256(&self.0);
        digest[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    }
}

impl From<[u8; KEY_LEN]> for PublicKey {
    fn from(bytes: [u8; KEY_LEN]) -> PublicKey {
        PublicKey(bytes)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.z85())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.z85())
    }
}

/// A secret key, wiped from memory when dropped.
pub struct SecretKey([u8; KEY_LEN]);

impl SecretKey {
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl Drop for SecretKey {
    fn drop(&mut self) {
        // SAFETY: the pointer and length describe our own array.
        unsafe { sodium::sodium_memzero(self.0.as_mut_ptr().cast(), KEY_LEN) };
    }
}

/// A CURVE key pair.
pub struct KeyPair {
    pub public: PublicKey,
    pub secret: SecretKey,
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secret, not even in a debug log.
        write!(f, "KeyPair({})", self.public.z85())
    }
}

impl KeyPair {
    /// A fresh random key pair.
    pub fn generate() -> KeyPair {
        init();
        let mut public = [0u8; KEY_LEN];
        let mut secret = [0u8; KEY_LEN];
        // SAFETY: both buffers are crypto_box_PUBLICKEYBYTES /
        // SECRETKEYBYTES (32) long.
        unsafe { sodium::crypto_box_keypair(public.as_mut_ptr(), secret.as_mut_ptr()) };
        KeyPair {
            public: PublicKey(public),
            secret: SecretKey(secret),
        }
    }

    /// The key pair whose secret half is `secret`.
    pub fn from_secret(secret: [u8; KEY_LEN]) -> KeyPair {
        init();
        let mut public = [0u8; KEY_LEN];
        // SAFETY: 32-byte output and input, as crypto_scalarmult_base takes.
        unsafe { sodium::crypto_scalarmult_base(public.as_mut_ptr(), secret.as_ptr()) };
        KeyPair {
            public: PublicKey(public),
            secret: SecretKey(secret),
        }
    }

    /// Load the key pair in `path`, or create one there if there is none.
    /// Returns the pair and whether it was created.
    pub fn load_or_create(path: &Path) -> Result<(KeyPair, bool), String> {
        match fs::symlink_metadata(path) {
            Ok(_) => Ok((KeyPair::load(path)?, false)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let pair = KeyPair::generate();
                match pair.store_new(path) {
                    Ok(()) => Ok((pair, true)),
                    // Another process made one at the same moment: theirs
                    // is the key, as it is the one on disk.
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        Ok((KeyPair::load(path)?, false))
                    }
                    Err(e) => Err(format!("cannot write the key file {}: {e}", path.display())),
                }
            }
            Err(e) => Err(format!("cannot read the key file {}: {e}", path.display())),
        }
    }

    /// Read a key file, refusing one that others may read or that does not
    /// hold a matching pair.
    pub fn load(path: &Path) -> Result<KeyPair, String> {
        let at = |why: String| format!("key file {}: {why}", path.display());
        let meta = fs::metadata(path).map_err(|e| at(e.to_string()))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(at(format!(
                "others may read this secret key (mode {mode:04o}); run chmod 600 {}",
                path.display()
            )));
        }
        let text = fs::read_to_string(path).map_err(|e| at(e.to_string()))?;
        let (mut public, mut secret) = (None, None);
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (field, value) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let slot = match field {
                "public" => &mut public,
                "secret" => &mut secret,
                _ => return Err(at(format!("line {}: unknown field '{field}'", i + 1))),
            };
            *slot =
                Some(PublicKey::from_z85(value).map_err(|e| at(format!("line {}: {e}", i + 1)))?);
        }
        let (Some(public), Some(secret)) = (public, secret) else {
            return Err(at("expected a 'public' and a 'secret' line".into()));
        };
        let pair = KeyPair::from_secret(secret.0);
        if pair.public != public {
            return Err(at(
                "the public key does not belong to the secret key (file damaged?)".into(),
            ));
        }
        Ok(pair)
    }

    /// Write the pair to a new file `path`, mode 0600, atomically: it is
    /// written and synced under a temporary name, then linked into place,
    /// which fails (`AlreadyExists`) rather than replace a key someone else
    /// wrote. The directory is created (mode 0700) if missing.
    pub fn store_new(&self, path: &Path) -> io::Result<()> {
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let tmp = tmp_path(path);
        let text = format!(
            "# director CURVE key pair: keep this file secret\npublic {}\nsecret {}\n",
            self.public.z85(),
            z85_encode(self.secret.as_bytes())
        );
        let result = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            fs::hard_link(&tmp, path)?;
            File::open(dir)?.sync_all()
        })();
        let _ = fs::remove_file(&tmp);
        result
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}", std::process::id()));
    path.with_file_name(name)
}

/// What a `--shared-key` stands for: the server's key pair, which every
/// client can compute, and the key that signs enrolment proofs.
pub struct SharedKey {
    server: KeyPair,
    proof_key: SecretKey,
}

impl SharedKey {
    /// What a daemon does with `--shared-key` at start: warn when it is
    /// short enough to guess, then derive.
    pub fn for_daemon(shared: &str) -> Result<SharedKey, String> {
        if shared.len() < WEAK_SHARED_KEY {
            log::warn!(
                "the shared key is shorter than {WEAK_SHARED_KEY} characters: one captured handshake is enough to guess a weak key offline; use a long random one (for example `head -c 32 /dev/urandom | base64`)"
            );
        }
        SharedKey::derive(shared)
    }

    /// Derive both from the shared key with Argon2id. Deliberately slow
    /// (tens of milliseconds): it is done once per daemon start. Fails only
    /// when its memory cannot be had.
    pub fn derive(shared: &str) -> Result<SharedKey, String> {
        init();
        let mut out = [0u8; 2 * KEY_LEN];
        // SAFETY: every pointer and length describes a live buffer; the salt
        // is crypto_pwhash_SALTBYTES (16) long.
        let rc = unsafe {
            sodium::crypto_pwhash(
                out.as_mut_ptr(),
                out.len() as u64,
                shared.as_ptr().cast(),
                shared.len() as u64,
                SHARED_KEY_SALT.as_ptr(),
                PWHASH_OPS,
                PWHASH_MEM,
                sodium::crypto_pwhash_ALG_ARGON2ID13 as i32,
            )
        };
        if rc != 0 {
            return Err(format!(
                "cannot derive keys from the shared key: Argon2id could not have {} MiB of memory",
                PWHASH_MEM >> 20
            ));
        }
        let mut server = [0u8; KEY_LEN];
        let mut proof = [0u8; KEY_LEN];
        server.copy_from_slice(&out[..KEY_LEN]);
        proof.copy_from_slice(&out[KEY_LEN..]);
        // SAFETY: our own buffer.
        unsafe { sodium::sodium_memzero(out.as_mut_ptr().cast(), out.len()) };
        Ok(SharedKey {
            server: KeyPair::from_secret(server),
            proof_key: SecretKey(proof),
        })
    }

    /// The server's key pair under this shared key.
    pub fn server(&self) -> &KeyPair {
        &self.server
    }

    /// The proof that the holder of `client` knows the shared key, bound to
    /// both public keys so it can be neither replayed by another key nor
    /// shown to another server.
    pub fn proof(&self, client: &PublicKey) -> [u8; PROOF_LEN] {
        let msg = self.proof_message(client);
        let mut mac = [0u8; PROOF_LEN];
        // SAFETY: 32-byte output and key, as crypto_auth_hmacsha256 takes.
        unsafe {
            sodium::crypto_auth_hmacsha256(
                mac.as_mut_ptr(),
                msg.as_ptr(),
                msg.len() as u64,
                self.proof_key.0.as_ptr(),
            )
        };
        mac
    }

    /// Check a proof in constant time.
    pub fn verify(&self, client: &PublicKey, proof: &[u8]) -> bool {
        if proof.len() != PROOF_LEN {
            return false;
        }
        let msg = self.proof_message(client);
        // SAFETY: `proof` is 32 bytes (checked), the key 32 bytes.
        unsafe {
            sodium::crypto_auth_hmacsha256_verify(
                proof.as_ptr(),
                msg.as_ptr(),
                msg.len() as u64,
                self.proof_key.0.as_ptr(),
            ) == 0
        }
    }

    fn proof_message(&self, client: &PublicKey) -> Vec<u8> {
        let mut msg = PROOF_LABEL.to_vec();
        msg.extend_from_slice(client.as_bytes());
        msg.extend_from_slice(self.server.public.as_bytes());
        msg
    }
}

/// Z85 (ZeroMQ RFC 32) alphabet.
const Z85: &[u8; 85] =
    b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";

/// Encode bytes (a multiple of 4 long, as keys are) as Z85.
pub fn z85_encode(data: &[u8]) -> String {
    debug_assert!(data.len().is_multiple_of(4));
    let mut out = String::with_capacity(data.len() * 5 / 4);
    for chunk in data.chunks(4) {
        let mut v = chunk.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b));
        let mut digits = [0u8; 5];
        for d in digits.iter_mut().rev() {
            *d = Z85[(v % 85) as usize];
            v /= 85;
        }
        out.extend(digits.iter().map(|&c| c as char));
    }
    out
}

/// Decode Z85 text, refusing a bad length, a character outside the
/// alphabet, or a group that overflows 32 bits.
pub fn z85_decode(text: &str) -> Result<Vec<u8>, String> {
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(5) {
        return Err(format!(
            "'{}' is not Z85: its length ({}) is not a multiple of 5",
            text.escape_default(),
            bytes.len()
        ));
    }
    let mut out = Vec::with_capacity(bytes.len() / 5 * 4);
    for group in bytes.chunks(5) {
        let mut v: u64 = 0;
        for &c in group {
            let Some(d) = Z85.iter().position(|&z| z == c) else {
                return Err(format!(
                    "'{}' is not Z85: '{}' is not in its alphabet",
                    text.escape_default(),
                    (c as char).escape_default()
                ));
            };
            v = v * 85 + d as u64;
        }
        let v = u32::try_from(v).map_err(|_| format!("'{}' is not Z85", text.escape_default()))?;
        out.extend_from_slice(&v.to_be_bytes());
    }
    Ok(out)
}

/// `N` bytes from the system's secure random source (libsodium's).
pub fn random_bytes<const N: usize>() -> [u8; N] {
    init();
    let mut out = [0u8; N];
    // SAFETY: writes exactly `N` bytes into `out`.
    unsafe { sodium::randombytes_buf(out.as_mut_ptr().cast(), N) };
    out
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    init();
    let mut out = [0u8; 32];
    // SAFETY: 32-byte output (crypto_hash_sha256_BYTES), input slice as given.
    unsafe { sodium::crypto_hash_sha256(out.as_mut_ptr(), data.as_ptr(), data.len() as u64) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libzmq_is_built_with_curve() {
        // The point of vendor/zmq-sys: without libsodium it would be false.
        assert_eq!(zmq::has("curve"), Some(true));
    }

    #[test]
    fn z85_matches_the_rfc_and_libzmq() {
        let bytes = [0x86, 0x4F, 0xD2, 0x6F, 0xB5, 0x59, 0xF7, 0x5B];
        assert_eq!(z85_encode(&bytes), "HelloWorld");
        assert_eq!(z85_decode("HelloWorld").unwrap(), bytes);
        let pair = zmq::CurveKeyPair::new().unwrap();
        let text = z85_encode(&pair.public_key);
        assert_eq!(text, zmq::z85_encode(&pair.public_key).unwrap());
        assert_eq!(
            PublicKey::from_z85(&text).unwrap().as_bytes(),
            &pair.public_key
        );
        assert!(z85_decode("Hello").is_ok());
        assert!(z85_decode("Hell").unwrap_err().contains("multiple of 5"));
        assert!(z85_decode("Hell~").unwrap_err().contains("alphabet"));
        assert!(z85_decode("#####").is_err(), "overflows 32 bits");
        assert!(PublicKey::from_z85("HelloWorld")
            .unwrap_err()
            .contains("40"));
    }

    #[test]
    fn a_secret_makes_its_public_key_as_libzmq_does() {
        let pair = KeyPair::generate();
        let again = KeyPair::from_secret(*pair.secret.as_bytes());
        assert_eq!(pair.public, again.public);
        let fp = pair.public.fingerprint();
        assert_eq!(fp.len(), 47);
        assert_eq!(fp.matches(':').count(), 15);
    }

    #[test]
    fn key_files_are_private_atomic_and_checked() {
        let dir = std::env::temp_dir().join(format!("director-curve-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let path = dir.join("sub").join("node.key");
        let (pair, created) = KeyPair::load_or_create(&path).unwrap();
        assert!(created);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        let (again, created) = KeyPair::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(pair.public, again.public);
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
        // Never replaces a key on disk.
        let e = KeyPair::generate().store_new(&path).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(KeyPair::load(&path).unwrap().public, pair.public);
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);

        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let e = KeyPair::load(&path).unwrap_err();
        assert!(e.contains("mode 0644") && e.contains("chmod 600"), "{e}");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();

        let other = KeyPair::generate();
        let text = fs::read_to_string(&path).unwrap();
        let mixed = text.replace(&pair.public.z85(), &other.public.z85());
        fs::write(&path, mixed).unwrap();
        assert!(KeyPair::load(&path)
            .unwrap_err()
            .contains("does not belong"));
        fs::write(&path, "public nonsense\n").unwrap();
        let e = KeyPair::load(&path).unwrap_err();
        assert!(e.contains("line 1"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_shared_key_derives_one_server_key_and_proofs_bound_to_each_client() {
        let a = SharedKey::derive("correct horse battery staple").unwrap();
        let b = SharedKey::derive("correct horse battery staple").unwrap();
        let other = SharedKey::derive("correct horse battery stapler").unwrap();
        assert_eq!(a.server().public, b.server().public);
        assert_ne!(a.server().public, other.server().public);
        let c1 = KeyPair::generate().public;
        let c2 = KeyPair::generate().public;
        let proof = a.proof(&c1);
        assert!(b.verify(&c1, &proof));
        assert!(!b.verify(&c2, &proof), "bound to the client's key");
        assert!(!other.verify(&c1, &proof), "bound to the shared key");
        assert!(!b.verify(&c1, &proof[..31]));
    }
}
