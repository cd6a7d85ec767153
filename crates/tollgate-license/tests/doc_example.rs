//! Keeps `docs/license-format.md` and the code in step: its example license is generated
//! here from the spec in the doc, and the doc's license must verify with the doc's public
//! key. `TOLLGATE_BLESS=1` rewrites the generated sections.

use tollgate_license::timestamp::parse_rfc3339;
use tollgate_license::{LicenseSpec, PublicKey, SigningKey, TrustedKeys};

const DOC_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/license-format.md");
const SIGNED_AT: &str = "2029-12-12T16:20:43Z";

/// The example key: never used for anything but this documentation.
fn example_key() -> SigningKey {
    SigningKey::from_seed(blake3::hash(b"tollgate documentation example key").as_bytes())
}

/// The text of the fenced block between `<!-- BEGIN {marker}` and `<!-- END {marker}`.
fn section<'a>(doc: &'a str, marker: &str) -> &'a str {
    let begin = format!("<!-- BEGIN {marker}");
    let start = doc
        .find(&begin)
        .unwrap_or_else(|| panic!("no {begin} in the doc"));
    let start = start + doc[start..].find("-->\n").expect("marker ends") + 4;
    let end = start + doc[start..].find("<!-- END ").expect("an END marker");
    let block = &doc[start..end];
    let Some(code) = block
        .strip_prefix("```toml\n")
        .or_else(|| block.strip_prefix("```text\n"))
    else {
        return block;
    };
    code.strip_suffix("```\n")
        .expect("the fence closes before the END marker")
}

fn replace_generated(doc: &str, name: &str, content: &str) -> String {
    let begin = format!("<!-- BEGIN GENERATED {name} -->\n");
    let end = format!("<!-- END GENERATED {name} -->");
    let start = doc.find(&begin).expect("BEGIN marker") + begin.len();
    let stop = doc.find(&end).expect("END marker");
    format!("{}```text\n{content}```\n{}", &doc[..start], &doc[stop..])
}

#[test]
fn the_doc_example_is_generated_and_verifies() {
    let doc = std::fs::read_to_string(DOC_PATH).expect("docs/license-format.md is readable");
    let key = example_key();
    let spec = LicenseSpec::parse(section(&doc, "example-spec")).expect("the doc's spec parses");
    let signed_at = parse_rfc3339(SIGNED_AT).expect("valid time");
    let document = spec
        .to_document(key.key_id(), signed_at)
        .expect("the doc's spec is valid");
    let license = tollgate_license::sign(&document, &key).expect("signs");
    let public = key.public_key().to_file_string();
    let log_line = format!("{}\n", tollgate_license::log_line(&document));

    let generated = [
        ("example-public-key", public.as_str()),
        ("example-license", license.as_str()),
        ("example-log-line", log_line.as_str()),
    ];
    if std::env::var_os("TOLLGATE_BLESS").is_some() {
        let mut blessed = doc.clone();
        for (name, content) in generated {
            blessed = replace_generated(&blessed, name, content);
        }
        std::fs::write(DOC_PATH, blessed).expect("rewrites the doc");
        return;
    }
    for (name, content) in generated {
        assert_eq!(
            section(&doc, &format!("GENERATED {name}")),
            content,
            "docs/license-format.md is stale: run TOLLGATE_BLESS=1 cargo test -p \
             tollgate-license --test doc_example"
        );
    }

    // Independently of the generator: the doc's license verifies with the doc's key.
    let doc_key = PublicKey::from_file_str(section(&doc, "GENERATED example-public-key"))
        .expect("the doc's public key reads");
    let trusted = TrustedKeys::single(doc_key);
    let doc_license = section(&doc, "GENERATED example-license");
    let verified = tollgate_license::verify(doc_license.as_bytes(), &trusted)
        .expect("the doc's license verifies with the doc's key");
    assert_eq!(verified.document(), &document);
    assert_eq!(verified.armored(), doc_license);
    // Pasted through an e-mail client, it still verifies.
    let mailed = format!("\r\n {}\r\n", doc_license.replace('\n', "  \r\n"));
    assert!(tollgate_license::verify(mailed.as_bytes(), &trusted).is_ok());
}
