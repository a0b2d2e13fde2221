//! Dropping what a bundle carries only for debugging: the `name` and `component-name`
//! custom sections (function and item names for trap backtraces) and DWARF (`.debug_*`),
//! in the component and every module and component nested in it. Nothing a runtime runs
//! or links by changes: custom sections carry no semantics, so the stripped bundle
//! behaves exactly as before (and a trap's backtrace names functions by index).

use anyhow::{Context as _, bail};

/// The wasm binary preamble: `\0asm`, then a 4-byte version/layer field.
const PREAMBLE: usize = 8;
/// Section ids in a component that hold a nested core module or a nested component.
const NESTED_MODULE: u8 = 1;
const NESTED_COMPONENT: u8 = 4;

/// What [`strip_debug_names`] dropped.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stripped {
    /// Custom sections removed.
    pub sections: usize,
    /// Their bytes (section headers included).
    pub bytes: usize,
}

/// `wasm` (a component or a core module) without its debugging custom sections, at every
/// level of nesting.
pub fn strip_debug_names(wasm: &[u8]) -> anyhow::Result<(Vec<u8>, Stripped)> {
    let mut out = Vec::with_capacity(wasm.len());
    let mut stripped = Stripped::default();
    strip_into(wasm, &mut out, &mut stripped)?;
    Ok((out, stripped))
}

/// Whether a custom section named `name` is debugging information only.
fn is_debug_section(name: &str) -> bool {
    name == "name" || name == "component-name" || name.starts_with(".debug_")
}

fn strip_into(wasm: &[u8], out: &mut Vec<u8>, stripped: &mut Stripped) -> anyhow::Result<()> {
    let Some((preamble, mut rest)) = wasm.split_first_chunk::<PREAMBLE>() else {
        bail!("not a wasm binary: {} bytes", wasm.len());
    };
    let [b'\0', b'a', b's', b'm', _, _, layer_low, layer_high] = *preamble else {
        bail!("not a wasm binary: no `\\0asm` preamble");
    };
    // Layer 1 (bytes 6-7) is a component; 0 a core module.
    let component = [layer_low, layer_high] == [1, 0];
    out.extend_from_slice(preamble);
    while let Some((&id, after_id)) = rest.split_first() {
        let (size, after_size) = read_u32(after_id).context("a section size")?;
        let size = usize::try_from(size).context("a section size")?;
        let Some((body, next)) = after_size.split_at_checked(size) else {
            bail!("a section of {size} bytes runs past the end of the binary");
        };
        let header = after_id.len() - after_size.len() + 1;
        if id == 0 && is_debug_section(custom_name(body)?) {
            stripped.sections += 1;
            stripped.bytes += header + size;
        } else if component && (id == NESTED_MODULE || id == NESTED_COMPONENT) {
            let mut inner = Vec::with_capacity(body.len());
            strip_into(body, &mut inner, stripped)?;
            out.push(id);
            write_u32(out, u32::try_from(inner.len()).context("a nested section")?);
            out.extend_from_slice(&inner);
        } else {
            // The section as it was: its id, size (as encoded) and body.
            let encoded_size = after_id
                .get(..after_id.len() - after_size.len())
                .context("a section size")?;
            out.push(id);
            out.extend_from_slice(encoded_size);
            out.extend_from_slice(body);
        }
        rest = next;
    }
    Ok(())
}

/// The name a custom section's body starts with.
fn custom_name(body: &[u8]) -> anyhow::Result<&str> {
    let (len, after) = read_u32(body).context("a custom section's name")?;
    let len = usize::try_from(len).context("a custom section's name")?;
    let name = after
        .get(..len)
        .context("a custom section's name runs past its section")?;
    std::str::from_utf8(name).context("a custom section's name is not UTF-8")
}

/// An unsigned LEB128 `u32` and what follows it.
fn read_u32(bytes: &[u8]) -> anyhow::Result<(u32, &[u8])> {
    let mut value: u32 = 0;
    for (i, &b) in bytes.iter().enumerate().take(5) {
        let bits = u32::from(b & 0x7f);
        if i == 4 && bits > 0x0f {
            bail!("a LEB128 u32 overflows");
        }
        value |= bits << (7 * i);
        if b & 0x80 == 0 {
            return Ok((value, bytes.get(i + 1..).unwrap_or_default()));
        }
    }
    bail!("a LEB128 u32 is cut short or too long")
}

fn write_u32(out: &mut Vec<u8>, mut value: u32) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// Every custom section name at any depth of `wasm`.
    fn custom_sections(wasm: &[u8]) -> Vec<String> {
        let mut names = Vec::new();
        for payload in wasmparser::Parser::new(0).parse_all(wasm) {
            if let wasmparser::Payload::CustomSection(c) = payload.unwrap() {
                names.push(c.name().to_owned());
            }
        }
        names
    }

    fn validate(wasm: &[u8]) {
        wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all())
            .validate_all(wasm)
            .unwrap();
    }

    #[test]
    fn the_gateway_component_loses_its_names_and_nothing_else() {
        let original = crate::wasm::COMPONENT;
        let before = custom_sections(original);
        assert!(before.iter().any(|n| n == "name"), "{before:?}");
        assert!(before.iter().any(|n| n == "component-name"), "{before:?}");
        let (stripped, what) = strip_debug_names(original).unwrap();
        validate(&stripped);
        let after = custom_sections(&stripped);
        let kept: Vec<_> = before
            .iter()
            .filter(|n| !is_debug_section(n))
            .cloned()
            .collect();
        assert_eq!(after, kept);
        assert_eq!(what.sections, before.len() - kept.len());
        assert_eq!(stripped.len() + what.bytes, original.len());
        // Stripping again finds nothing more.
        let (again, none) = strip_debug_names(&stripped).unwrap();
        assert_eq!((again, none), (stripped, Stripped::default()));
    }

    #[test]
    fn a_core_module_keeps_its_code_and_loses_its_names() {
        let module = wat::parse_str(
            r#"(module $m (func $answer (export "answer") (result i32) (i32.const 42)))"#,
        )
        .unwrap();
        assert_eq!(custom_sections(&module), ["name"]);
        let (stripped, what) = strip_debug_names(&module).unwrap();
        validate(&stripped);
        assert!(custom_sections(&stripped).is_empty());
        assert_eq!(what.sections, 1);
        assert!(stripped.ends_with(&[0x0b]), "the code section is intact");
    }

    #[test]
    fn damaged_binaries_are_refused_not_misread() {
        assert!(strip_debug_names(b"").is_err());
        assert!(strip_debug_names(b"\0asx\x01\0\0\0").is_err());
        // A section claiming more bytes than there are.
        assert!(strip_debug_names(b"\0asm\x01\0\0\0\x01\x7f\x00").is_err());
        // A size whose LEB128 never ends.
        assert!(strip_debug_names(b"\0asm\x01\0\0\0\x01\xff\xff\xff\xff\xff\xff").is_err());
        // A custom section whose name runs past it.
        assert!(strip_debug_names(b"\0asm\x01\0\0\0\x00\x02\x09ab").is_err());
    }

    #[test]
    fn leb128_round_trips_at_the_boundaries() {
        for v in [0, 1, 127, 128, 16_383, 16_384, u32::MAX] {
            let mut out = Vec::new();
            write_u32(&mut out, v);
            let (back, rest) = read_u32(&out).unwrap();
            assert_eq!((back, rest.len()), (v, 0));
        }
        // Five bytes hold 32 bits: a fifth byte with more is refused, not truncated.
        assert_eq!(
            read_u32(&[0xff, 0xff, 0xff, 0xff, 0x0f]).unwrap().0,
            u32::MAX
        );
        assert!(read_u32(&[0xff, 0xff, 0xff, 0xff, 0x1f]).is_err());
    }
}
