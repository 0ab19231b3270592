//! The master keys that seal the stored secrets (`sluice_core::sealing`): where a process
//! gets them (`SLUICE_MASTER_KEY`, `--master-key-file`, or for `sluice dev` a key file it
//! keeps in its data directory), and `sluice keys rotate`, which re-seals every stored
//! secret of a plane's database under the current key. No key is ever printed, except
//! the new one `sluice keys generate` makes.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use sluice_core::sealing::{Keyring, Reseal, Resealed};
use sluice_store::Plane;
use sluice_store::sea_orm::DatabaseConnection;

/// The file `sluice dev` keeps its development key in, under its data directory.
pub const DEV_KEY_FILE: &str = "master.key";

/// What to tell someone who gave no master key.
const HOW_TO_GIVE_ONE: &str = "set SLUICE_MASTER_KEY (base64 of 32 random bytes; `sluice keys generate` makes one) or pass --master-key-file";

/// The keyring from `SLUICE_MASTER_KEY`'s value or from a key file (same content: base64
/// keys separated by commas, the current one first); `None` when neither is given.
pub fn keyring_from(value: Option<&str>, file: Option<&Path>) -> anyhow::Result<Option<Keyring>> {
    match (value, file) {
        (Some(_), Some(_)) => {
            bail!("both SLUICE_MASTER_KEY and --master-key-file are given; give one")
        }
        (Some(value), None) => Keyring::parse(value)
            .map(Some)
            .map_err(|e| anyhow::anyhow!("SLUICE_MASTER_KEY: {e}")),
        (None, Some(path)) => read_key_file(path).map(Some),
        (None, None) => Ok(None),
    }
}

/// A keyring that must be given (`sluice control`, `sluice data`, `sluice keys rotate`).
pub fn required(keyring: Option<Keyring>) -> anyhow::Result<Keyring> {
    keyring.with_context(|| {
        format!("a master key is required to seal the stored signing secrets: {HOW_TO_GIVE_ONE}")
    })
}

/// Where `sluice dev`'s key came from, for its banner.
#[derive(Debug)]
pub enum DevKey {
    /// Given by the operator.
    Given,
    /// Made now and written to this file.
    Created(PathBuf),
    /// Read from this file, written by an earlier run.
    Kept(PathBuf),
}

/// `sluice dev`'s keyring: the one given, or else `<data_dir>/master.key`, made (mode
/// 0600) on the first start and kept after, since the stored secrets need it.
pub fn dev_keyring(given: Option<Keyring>, data_dir: &Path) -> anyhow::Result<(Keyring, DevKey)> {
    if let Some(keyring) = given {
        return Ok((keyring, DevKey::Given));
    }
    let path = data_dir.join(DEV_KEY_FILE);
    if path.exists() {
        return Ok((read_key_file(&path)?, DevKey::Kept(path)));
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
    let key = sluice_core::sealing::generate_master_key();
    let mut options = std::fs::OpenOptions::new();
    // `create_new`: two starts at once cannot both write a key and use different ones.
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&path)
        .with_context(|| format!("cannot create the master key file {}", path.display()))?;
    writeln!(file, "{key}")
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write the master key file {}", path.display()))?;
    let keyring = Keyring::parse(&key).context("the generated master key")?;
    Ok((keyring, DevKey::Created(path)))
}

fn read_key_file(path: &Path) -> anyhow::Result<Keyring> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the master key file {}", path.display()))?;
    Keyring::parse(&text).map_err(|e| anyhow::anyhow!("master key file {}: {e}", path.display()))
}

/// `sluice keys rotate` on one plane's open database: every stored secret not sealed
/// under the keyring's current key is sealed again under it, row by row (each its own
/// compare-and-set, so the planes may keep running on PostgreSQL). Idempotent: run it
/// again and it rewrites nothing. Fails, naming the key id, on a secret no given key opens.
pub async fn rotate(
    db: &DatabaseConnection,
    plane: Plane,
    keyring: &Keyring,
) -> anyhow::Result<Resealed> {
    let done = match plane {
        Plane::Control => {
            sluice_control::secrets::reseal_secrets(db, keyring, Reseal::NotCurrentKey).await?
        }
        Plane::Data => sluice_data::reseal_secrets(db, keyring, Reseal::NotCurrentKey).await?,
    };
    Ok(done)
}
