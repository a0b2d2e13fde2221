//! Tokens minted and checked by an independent library: `tests/interop/jwcrypto_tool.py`
//! (Python jwcrypto), for interop tests and DPoP proofs.

use std::process::Command;

use crate::repo_root;

/// Runs the jwcrypto tool with `args` (see the script's docstring): its trimmed stdout, or
/// its stderr when it fails.
pub fn tool(args: &[&str]) -> Result<String, String> {
    let script = repo_root().join("tests/interop/jwcrypto_tool.py");
    let out = Command::new("python3")
        .arg(&script)
        .args(args)
        .output()
        .expect("python3");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            !err.contains("No module named 'jwcrypto'"),
            "the interop tests need jwcrypto: python3 -m pip install jwcrypto"
        );
        Err(err)
    }
}
