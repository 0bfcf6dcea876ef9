//! The `deb-src` entries `apt-get source qemu` needs: one sources file of our own that mirrors
//! the machine's Debian `deb` entries as `deb-src`, leaving every other apt file untouched.
//!
//! apt reads `/etc/apt/sources.list` (one-line format) and `/etc/apt/sources.list.d/*.list`
//! (one-line) and `*.sources` (deb822), and ignores files with other endings (sources.list(5),
//! "SOURCES.LIST.D"). An entry is Debian's when one of its URIs contains `debian`
//! (`deb.debian.org`, `security.debian.org`, `snapshot.debian.org`, a mirror's `/debian` path);
//! third-party repositories (Google Cloud, NodeSource, ...) publish no sources and would make
//! `apt-get update` fail if mirrored.

use std::fmt::Write as _;

/// Where we write the entries (deb822, so inline `Signed-By` keys survive).
pub const OUR_FILE: &str = "/etc/apt/sources.list.d/rhax-deb-src.sources";

/// One Debian `deb` entry as deb822 fields (`Types` excluded: we write `deb-src`).
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    fields: Vec<(String, String)>,
}

/// The `deb-src` file for the apt files `files` (name, content), or `None` if none of them
/// has a Debian `deb` entry. Entries that already have `deb-src` beside `deb` are skipped:
/// apt has their sources already.
pub fn deb_src_file(files: &[(String, String)]) -> Option<String> {
    let mut entries = Vec::new();
    for (name, text) in files {
        if name.ends_with(".sources") {
            entries.extend(from_deb822(text));
        } else if name.ends_with(".list") {
            entries.extend(from_one_line(text));
        }
    }
    if entries.is_empty() {
        return None;
    }
    let mut out = String::from(
        "# Written by `cargo xtask qemu` (rhax): the Debian `deb` entries of this machine as\n\
         # `deb-src`, for `apt-get source qemu`. Safe to delete.\n",
    );
    for e in entries {
        out.push_str("\nTypes: deb-src\n");
        for (k, v) in &e.fields {
            // Multi-line values (an inline Signed-By key) keep deb822's continuation lines.
            let _ = writeln!(out, "{k}: {v}");
        }
    }
    Some(out)
}

fn is_debian(uris: &str) -> bool {
    uris.split_whitespace().any(|u| u.contains("debian"))
}

/// deb822 paragraphs (sources.list(5), "DEB822-STYLE FORMAT").
fn from_deb822(text: &str) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut para: Vec<(String, String)> = Vec::new();
    let flush = |para: &mut Vec<(String, String)>, out: &mut Vec<Entry>| {
        let get = |key: &str| {
            para.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v.as_str())
        };
        let types = get("Types").unwrap_or("");
        let enabled = get("Enabled").is_none_or(|v| !v.trim().eq_ignore_ascii_case("no"));
        let has = |t: &str| types.split_whitespace().any(|x| x == t);
        if enabled && has("deb") && !has("deb-src") && is_debian(get("URIs").unwrap_or("")) {
            let fields = para
                .iter()
                .filter(|(k, _)| !k.eq_ignore_ascii_case("Types"))
                .cloned()
                .collect();
            out.push(Entry { fields });
        }
        para.clear();
    };
    for line in text.lines() {
        if line.trim().is_empty() {
            flush(&mut para, &mut out);
        } else if line.starts_with('#') {
            continue;
        } else if line.starts_with([' ', '\t']) {
            // A continuation line belongs to the previous field.
            if let Some((_, v)) = para.last_mut() {
                v.push('\n');
                v.push_str(line);
            }
        } else if let Some((k, v)) = line.split_once(':') {
            para.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    flush(&mut para, &mut out);
    out
}

/// One-line entries: `deb [options] URI SUITE [COMPONENT...]`.
fn from_one_line(text: &str) -> Vec<Entry> {
    let lines: Vec<&str> = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .collect();
    let has_src = |uri: &str, suite: &str| {
        lines.iter().any(|l| {
            l.starts_with("deb-src ") && {
                let (_, words) = split_options(&l["deb-src ".len()..]);
                words.first() == Some(&uri) && words.get(1) == Some(&suite)
            }
        })
    };
    let mut out = Vec::new();
    for l in &lines {
        let Some(rest) = l.strip_prefix("deb ") else {
            continue;
        };
        let (options, words) = split_options(rest);
        let (Some(uri), Some(suite)) = (words.first(), words.get(1)) else {
            continue;
        };
        if !is_debian(uri) || has_src(uri, suite) {
            continue;
        }
        let mut fields = vec![
            ("URIs".to_string(), uri.to_string()),
            ("Suites".to_string(), suite.to_string()),
        ];
        if words.len() > 2 {
            fields.push(("Components".to_string(), words[2..].join(" ")));
        }
        for o in options {
            if let Some((k, v)) = o.split_once('=') {
                // `signed-by=` is deb822's `Signed-By`; other options keep their names.
                let key = match k {
                    "signed-by" => "Signed-By".to_string(),
                    "arch" => "Architectures".to_string(),
                    "trusted" => "Trusted".to_string(),
                    other => other.to_string(),
                };
                fields.push((key, v.replace(',', " ")));
            }
        }
        out.push(Entry { fields });
    }
    out
}

/// Splits `[opt=v opt2=v] uri suite ...` into options and words.
fn split_options(s: &str) -> (Vec<&str>, Vec<&str>) {
    let s = s.trim();
    if let Some(body) = s.strip_prefix('[') {
        if let Some((opts, rest)) = body.split_once(']') {
            return (
                opts.split_whitespace().collect(),
                rest.split_whitespace().collect(),
            );
        }
    }
    (Vec::new(), s.split_whitespace().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This machine's layout: Debian's deb822 file plus a third-party one-line list.
    #[test]
    fn mirrors_debian_deb822_entries_and_skips_third_parties() {
        let debian = "Types: deb\n\
            # http://snapshot.debian.org/archive/debian/20250520T000000Z\n\
            URIs: http://deb.debian.org/debian\n\
            Suites: bookworm bookworm-updates\n\
            Components: main\n\
            Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\
            \n\
            Types: deb\n\
            URIs: http://deb.debian.org/debian-security\n\
            Suites: bookworm-security\n\
            Components: main\n\
            Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n";
        let files = vec![
            ("debian.sources".to_string(), debian.to_string()),
            (
                "google.list".to_string(),
                "deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main\n".to_string(),
            ),
        ];
        let out = deb_src_file(&files).unwrap();
        assert_eq!(out.matches("Types: deb-src").count(), 2, "{out}");
        assert!(out.contains("URIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg"), "{out}");
        assert!(out.contains("URIs: http://deb.debian.org/debian-security"));
        assert!(!out.contains("google"), "{out}");
        assert!(!out.contains("snapshot"), "comments are not copied: {out}");
    }

    #[test]
    fn one_line_entries_become_paragraphs_with_their_options() {
        let list = "deb [arch=amd64 signed-by=/k.gpg] http://ftp.de.debian.org/debian bookworm main contrib # c\n\
                    deb http://security.debian.org/debian-security bookworm-security main\n\
                    deb-src http://security.debian.org/debian-security bookworm-security main\n\
                    # deb http://deb.debian.org/debian sid main\n";
        let out = deb_src_file(&[("sources.list".into(), list.into())]).unwrap();
        assert_eq!(out.matches("Types: deb-src").count(), 1, "{out}");
        assert!(out.contains(
            "URIs: http://ftp.de.debian.org/debian\nSuites: bookworm\nComponents: main contrib\n\
             Architectures: amd64\nSigned-By: /k.gpg\n"
        ));
        assert!(!out.contains("sid"));
    }

    #[test]
    fn disabled_or_already_sourced_or_other_files_give_nothing() {
        let files = vec![
            (
                "a.sources".to_string(),
                "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm\nEnabled: no\n"
                    .to_string(),
            ),
            (
                "b.sources".to_string(),
                "Types: deb deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm\n"
                    .to_string(),
            ),
            (
                "c.sources.disabled".to_string(),
                "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm\n".to_string(),
            ),
        ];
        assert_eq!(deb_src_file(&files), None);
    }

    #[test]
    fn inline_keys_keep_their_continuation_lines() {
        let text = "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm\n\
                    Signed-By:\n -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n abc\n";
        let out = deb_src_file(&[("x.sources".into(), text.into())]).unwrap();
        assert!(
            out.contains("Signed-By: \n -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n abc\n"),
            "{out}"
        );
    }
}
