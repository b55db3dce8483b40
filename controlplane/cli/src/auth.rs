//! `carmine auth ...`: rendering of client keys and the client key file.
//!
//! The key file is the contract of `carmine-client` and `carmine bench --keyfile` (TOML, two
//! keys: `id` and `key` as 64 lowercase hex digits). It is written with mode 0600 to a
//! temporary file in the same directory and renamed over the target, so a reader never sees a
//! half-written key and the secret is never readable by others, not even briefly.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use carmine_proto::v1;
use serde::Serialize;
use serde_json::json;

use crate::args::Format;
use crate::output::Out;
use crate::run::CliError;

/// The key as 64 lowercase hex digits.
pub fn hex(key: &[u8]) -> String {
    key.iter()
        .fold(String::with_capacity(2 * key.len()), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// The client key file (see the module docs).
#[derive(Debug, Serialize)]
struct KeyFile<'a> {
    id: &'a str,
    key: String,
}

/// Writes the key file for `id` to `path` (mode 0600, replaced atomically).
pub fn write_keyfile(path: &Path, id: &str, key: &[u8]) -> Result<(), CliError> {
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        CliError::Other(format!("key file {}: {what}: {e}", path.display()))
    };
    // toml quotes and escapes the id, whatever printable characters it holds.
    let text =
        toml::to_string(&KeyFile { id, key: hex(key) }).map_err(|e| fail("cannot encode", &e))?;
    let name = path
        .file_name()
        .ok_or_else(|| fail("not a file name", &"the path ends in .. or /"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let write = || -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        fail("cannot write", &e)
    })
}

/// A key's role as the CLI shows it: `"client"`, `"admin"` or `"osd"` (with the OSD id).
fn role_name(role: i32) -> &'static str {
    match v1::KeyRole::try_from(role) {
        Ok(v1::KeyRole::Osd) => "osd",
        Ok(v1::KeyRole::Admin) => "admin",
        _ => "client",
    }
}

/// `osd new`: the OSD's id and key id (the key goes to the key file only, when asked; else
/// it is printed, as `auth get` would).
pub fn osd_new(o: &Out, r: &v1::OsdNewReply, keyfile: Option<&Path>) -> Result<String, CliError> {
    if r.key.len() != 32 {
        return Err(CliError::Other(format!(
            "the monitor sent a {}-byte key for {:?}; expected 32",
            r.key.len(),
            r.key_id
        )));
    }
    if let Some(path) = keyfile {
        write_keyfile(path, &r.key_id, &r.key)?;
    }
    Ok(if o.format == Format::Json {
        json_text(json!({
            "osd": r.id,
            "id": r.key_id,
            "created": r.created,
            "keyfile": keyfile.map(|p| p.display().to_string()),
            "key": keyfile.is_none().then(|| hex(&r.key)),
        }))
    } else if keyfile.is_some() {
        format!("{}\n", r.id)
    } else {
        format!("{} {} {}\n", r.id, r.key_id, hex(&r.key))
    })
}

/// `auth add` / `auth get`: the key (and the key file when asked).
pub fn key(o: &Out, r: &v1::AuthKeyReply, keyfile: Option<&Path>) -> Result<String, CliError> {
    if r.key.len() != 32 {
        return Err(CliError::Other(format!(
            "the monitor sent a {}-byte key for {:?}; expected 32",
            r.key.len(),
            r.id
        )));
    }
    if let Some(path) = keyfile {
        write_keyfile(path, &r.id, &r.key)?;
    }
    let key = hex(&r.key);
    Ok(if o.format == Format::Json {
        json_text(json!({
            "id": r.id,
            "key": key,
            "created": r.created,
            "keyring_version": r.keyring_version,
            "keyfile": keyfile.map(|p| p.display().to_string()),
            "role": role_name(r.role),
            "osd": (role_name(r.role) == "osd").then_some(r.osd_id),
        }))
    } else {
        format!("{key}\n")
    })
}

/// `auth rm`
pub fn removed(o: &Out, id: &str, r: &v1::AuthRmReply) -> String {
    if o.format == Format::Json {
        return json_text(json!({
            "id": id,
            "removed": true,
            "keyring_version": r.keyring_version,
        }));
    }
    format!(
        "removed the key of {id} (keyring version {})\n",
        r.keyring_version
    )
}

/// `auth ls`: one id per line, OSD keys marked `(osd)` (JSON: `ids`, and `keys` with roles).
pub fn ls(o: &Out, r: &v1::AuthListReply) -> String {
    if o.format == Format::Json {
        let keys: Vec<serde_json::Value> = r
            .entries
            .iter()
            .map(|e| {
                let role = role_name(e.role);
                json!({"id": e.id, "role": role, "osd": (role == "osd").then_some(e.osd_id)})
            })
            .collect();
        return json_text(json!({
            "ids": r.ids,
            "keys": keys,
            "keyring_version": r.keyring_version,
        }));
    }
    // A monitor without roles sends ids only: every one is a client's.
    let osd_ids: std::collections::HashSet<&str> = r
        .entries
        .iter()
        .filter(|e| role_name(e.role) == "osd")
        .map(|e| e.id.as_str())
        .collect();
    let admin_ids: std::collections::HashSet<&str> = r
        .entries
        .iter()
        .filter(|e| role_name(e.role) == "admin")
        .map(|e| e.id.as_str())
        .collect();
    r.ids.iter().fold(String::new(), |mut s, id| {
        s.push_str(id);
        if osd_ids.contains(id.as_str()) {
            s.push_str("  (osd)");
        } else if admin_ids.contains(id.as_str()) {
            s.push_str("  (admin)");
        }
        s.push('\n');
        s
    })
}

fn json_text(v: serde_json::Value) -> String {
    // Serialising a Value cannot fail.
    let mut s = serde_json::to_string_pretty(&v).unwrap_or_default();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ls_marks_osd_keys_with_their_role() {
        let entry = |id: &str, role: v1::KeyRole, osd_id: u32| v1::AuthEntry {
            id: id.into(),
            role: role.into(),
            osd_id,
        };
        let r = v1::AuthListReply {
            ids: vec!["client.a".into(), "osd.3".into()],
            keyring_version: 4,
            entries: vec![
                entry("client.a", v1::KeyRole::Client, 0),
                entry("osd.3", v1::KeyRole::Osd, 3),
            ],
        };
        let plain = Out {
            format: Format::Plain,
        };
        assert_eq!(ls(&plain, &r), "client.a\nosd.3  (osd)\n");
        let json: serde_json::Value = serde_json::from_str(&ls(
            &Out {
                format: Format::Json,
            },
            &r,
        ))
        .unwrap();
        assert_eq!(json["ids"], json!(["client.a", "osd.3"]));
        assert_eq!(
            json["keys"],
            json!([
                {"id": "client.a", "role": "client", "osd": null},
                {"id": "osd.3", "role": "osd", "osd": 3},
            ])
        );
        // A monitor from before roles: ids only, all shown plain.
        let old = v1::AuthListReply {
            entries: Vec::new(),
            ..r
        };
        assert_eq!(ls(&plain, &old), "client.a\nosd.3\n");
    }

    #[test]
    fn keyfile_is_toml_with_mode_0600_and_escapes_the_id() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.toml");
        // An existing, world-readable file is replaced by a private one.
        std::fs::write(&p, "old").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let key: Vec<u8> = (0u8..32).collect();
        write_keyfile(&p, "client.\"q\\", &key).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let t: toml::Table = std::fs::read_to_string(&p).unwrap().parse().unwrap();
        assert_eq!(t["id"].as_str(), Some("client.\"q\\"));
        assert_eq!(
            t["key"].as_str(),
            Some("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
        );
        assert_eq!(t.len(), 2);
        // No temporary file left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
