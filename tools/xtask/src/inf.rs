//! `cargo xtask inf`: a small lint of `inf/rhax.inf`, standing in for the WDK's InfVerif, which
//! exists only on Windows. It checks what a typo breaks and what ties the INF to the image:
//!
//! * `[Version]` has `Signature = "$WINDOWS NT$"`;
//! * no section is defined twice; every section a directive names exists (`CopyFiles`,
//!   `DelFiles`, `AddReg`, `DelReg`, `AddService`'s service-install section), and so does
//!   every install section the README tells users to run ([`INSTALL_SECTIONS`]), with its
//!   `.Services` section;
//! * every `%string%` used is defined in `[Strings]` (`%12%`-style directory ids aside);
//! * each service: the expected name per install section ([`SERVICES`]), ServiceType 1 (kernel
//!   driver), StartType 3 (demand), ErrorControl 1, ServiceBinary `%12%\` + the image's file
//!   name (`sys::IMAGE_NAME`), which `[SourceDisksFiles]` and the copied file list name too;
//!   each uninstall section deletes the service its install section adds.
//!
//! Not checked (InfVerif would): the full grammar and every directive's semantics, DriverVer
//! format rules, catalog/signature requirements of the driver store (`pnputil`), and how a
//! real Windows setup engine reads it.

use std::collections::{BTreeMap, BTreeSet};

/// `(install section, uninstall section, service name)`: the two ways to install.
pub const SERVICES: [(&str, &str, &str); 2] = [
    ("DefaultInstall", "DefaultUninstall", "rhax"),
    ("IntelHaxm.Install", "IntelHaxm.Uninstall", "IntelHaxm"),
];

/// Sections users run by name (README: right-click Install, `InstallHinfSection`).
pub const INSTALL_SECTIONS: [&str; 4] = [
    "DefaultInstall",
    "DefaultUninstall",
    "IntelHaxm.Install",
    "IntelHaxm.Uninstall",
];

/// One line of a section: `(key, value)` for `key = value`, `(None, line)` otherwise.
pub type Line = (Option<String>, String);

/// A parsed INF: section name (lower case) to its lines, `(key or None, value)`.
#[derive(Debug, Default)]
pub struct Inf {
    /// Sections by lower-case name: the name as written and the lines.
    pub sections: BTreeMap<String, (String, Vec<Line>)>,
    /// Problems found while parsing (duplicate sections, lines outside sections).
    pub errors: Vec<String>,
}

/// Removes a `;` comment that is not inside double quotes.
fn strip_comment(line: &str) -> &str {
    let mut quoted = false;
    for (i, c) in line.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ';' if !quoted => return &line[..i],
            _ => {}
        }
    }
    line
}

/// Parses INF text.
pub fn parse(text: &str) -> Inf {
    let mut inf = Inf::default();
    let mut current: Option<String> = None;
    for (n, raw) in text.lines().enumerate() {
        let line = strip_comment(raw).trim();
        if line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let key = name.trim().to_ascii_lowercase();
            if inf.sections.contains_key(&key) {
                inf.errors
                    .push(format!("line {}: section [{name}] defined twice", n + 1));
            }
            inf.sections
                .entry(key.clone())
                .or_insert_with(|| (name.trim().to_string(), Vec::new()));
            current = Some(key);
            continue;
        }
        let Some(section) = &current else {
            inf.errors
                .push(format!("line {}: `{line}` outside any section", n + 1));
            continue;
        };
        let entry = match line.split_once('=') {
            Some((k, v)) => (Some(k.trim().to_string()), v.trim().to_string()),
            None => (None, line.to_string()),
        };
        if let Some(s) = inf.sections.get_mut(section) {
            s.1.push(entry);
        }
    }
    inf
}

impl Inf {
    /// The lines of section `name` (case-insensitive).
    pub fn section(&self, name: &str) -> Option<&[Line]> {
        self.sections
            .get(&name.to_ascii_lowercase())
            .map(|s| s.1.as_slice())
    }

    /// The values of `key` (case-insensitive) in section `name`.
    pub fn values(&self, name: &str, key: &str) -> Vec<&str> {
        self.section(name)
            .unwrap_or(&[])
            .iter()
            .filter(|(k, _)| k.as_deref().is_some_and(|k| k.eq_ignore_ascii_case(key)))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The single value of `key` in section `name`, unquoted.
    pub fn value(&self, name: &str, key: &str) -> Option<String> {
        self.values(name, key)
            .first()
            .map(|v| v.trim_matches('"').to_string())
    }
}

/// Comma-separated fields, trimmed.
fn fields(v: &str) -> Vec<&str> {
    v.split(',').map(str::trim).collect()
}

/// The `%token%`s used in `text`, `%%` and numeric directory ids (`%12%`) aside.
fn string_tokens(text: &str) -> Vec<String> {
    let parts: Vec<&str> = text.split('%').collect();
    parts
        .iter()
        .enumerate()
        .skip(1)
        .step_by(2)
        .filter(|(i, t)| {
            *i + 1 < parts.len() && !t.is_empty() && !t.bytes().all(|b| b.is_ascii_digit())
        })
        .map(|(_, t)| t.to_string())
        .collect()
}

/// Every check; `image` is the driver's file name. Returns the evidence line.
pub fn lint(text: &str, image: &str) -> crate::Result<String> {
    let inf = parse(text);
    let mut errors = inf.errors.clone();
    let signature = inf.value("Version", "Signature");
    if !signature.is_some_and(|s| s.eq_ignore_ascii_case("$WINDOWS NT$")) {
        errors.push("[Version] lacks Signature = \"$WINDOWS NT$\"".into());
    }
    // Sections named by directives.
    let mut referenced = BTreeSet::new();
    for (section, lines) in inf.sections.values() {
        for (key, value) in lines {
            let Some(key) = key.as_deref().map(str::to_ascii_lowercase) else {
                continue;
            };
            let named: Vec<&str> = match key.as_str() {
                "copyfiles" | "delfiles" | "addreg" | "delreg" => fields(value)
                    .into_iter()
                    .filter(|f| !f.starts_with('@') && !f.is_empty())
                    .collect(),
                // AddService = name,flags,service-install-section[,event-log-section,...]
                "addservice" => fields(value).into_iter().skip(2).take(2).collect(),
                _ => Vec::new(),
            };
            for n in named.into_iter().filter(|n| !n.is_empty()) {
                referenced.insert(n.to_string());
                if inf.section(n).is_none() {
                    errors.push(format!("[{section}] {key} names a missing section [{n}]"));
                }
            }
        }
    }
    for s in INSTALL_SECTIONS {
        for name in [s.to_string(), format!("{s}.Services")] {
            if inf.section(&name).is_none() {
                errors.push(format!("install section [{name}] is missing"));
            }
        }
    }
    // Strings.
    let defined: BTreeSet<String> = inf
        .section("Strings")
        .unwrap_or(&[])
        .iter()
        .filter_map(|(k, _)| k.as_deref().map(str::to_ascii_lowercase))
        .collect();
    for (section, lines) in inf.sections.values() {
        if section.eq_ignore_ascii_case("Strings") {
            continue;
        }
        for (k, v) in lines {
            for t in string_tokens(&format!("{} {v}", k.as_deref().unwrap_or(""))) {
                if !defined.contains(&t.to_ascii_lowercase()) {
                    errors.push(format!("[{section}] uses %{t}%, not defined in [Strings]"));
                }
            }
        }
    }
    // Source files.
    let source_files: Vec<String> = inf
        .section("SourceDisksFiles")
        .unwrap_or(&[])
        .iter()
        .filter_map(|(k, _)| k.clone())
        .collect();
    if !source_files.iter().any(|f| f.eq_ignore_ascii_case(image)) {
        errors.push(format!("[SourceDisksFiles] does not list {image}"));
    }
    // Services.
    let binary = format!("%12%\\{image}");
    for (install, uninstall, service) in SERVICES {
        let adds = inf.values(&format!("{install}.Services"), "AddService");
        let Some(add) = adds
            .iter()
            .map(|a| fields(a))
            .find(|f| f[0].eq_ignore_ascii_case(service))
        else {
            errors.push(format!(
                "[{install}.Services] does not add the service {service}"
            ));
            continue;
        };
        let Some(svc) = add.get(2).copied().filter(|s| inf.section(s).is_some()) else {
            continue; // reported above as a missing section
        };
        for (key, want) in [
            ("ServiceType", "1"),
            ("StartType", "3"),
            ("ErrorControl", "1"),
            ("ServiceBinary", binary.as_str()),
        ] {
            let got = inf.value(svc, key);
            if !got.as_deref().is_some_and(|g| g.eq_ignore_ascii_case(want)) {
                errors.push(format!(
                    "[{svc}] {key} = {}, expected {want}",
                    got.as_deref().unwrap_or("(missing)")
                ));
            }
        }
        let copied: Vec<String> = inf
            .values(install, "CopyFiles")
            .iter()
            .flat_map(|v| fields(v))
            .flat_map(|list| {
                inf.section(list)
                    .unwrap_or(&[])
                    .iter()
                    .map(|(k, v)| k.clone().unwrap_or_else(|| fields(v)[0].to_string()))
                    .collect::<Vec<_>>()
            })
            .collect();
        if !copied.iter().any(|f| f.eq_ignore_ascii_case(image)) {
            errors.push(format!("[{install}] does not copy {image}"));
        }
        let deletes = inf.values(&format!("{uninstall}.Services"), "DelService");
        if !deletes
            .iter()
            .any(|d| fields(d)[0].eq_ignore_ascii_case(service))
        {
            errors.push(format!(
                "[{uninstall}.Services] does not delete the service {service}"
            ));
        }
    }
    if errors.is_empty() {
        Ok(format!(
            "{} sections, {} referenced, {} strings; services {} with ServiceBinary {binary}",
            inf.sections.len(),
            referenced.len(),
            defined.len(),
            SERVICES.map(|s| s.2).join(" and ")
        ))
    } else {
        Err(format!("inf/rhax.inf:\n  {}", errors.join("\n  ")))
    }
}

/// Lints the repository's `inf/rhax.inf` against the image name.
pub fn check_repo() -> crate::Result<String> {
    let path = crate::workspace_root().join("inf/rhax.inf");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    lint(&text, crate::sys::IMAGE_NAME).map(|l| format!("{}: {l}", path.display()))
}

/// `cargo xtask inf`.
pub fn main() -> crate::Result {
    println!("inf: {}", check_repo()?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{lint, parse, string_tokens};

    const INF: &str = include_str!("../../../inf/rhax.inf");

    #[test]
    fn the_repository_inf_passes() {
        let line = lint(INF, "rhax.sys").unwrap();
        assert!(line.contains("services rhax and IntelHaxm"), "{line}");
    }

    #[test]
    fn parses_sections_keys_and_comments() {
        let inf = parse("[A]\nk = \"x;y\" ; comment\nbare,1\n[a]\n");
        assert_eq!(inf.value("a", "K").as_deref(), Some("x;y"));
        assert_eq!(inf.section("A").unwrap()[1], (None, "bare,1".to_string()));
        assert_eq!(inf.errors.len(), 1, "[a] twice: {:?}", inf.errors);
        assert_eq!(string_tokens("%12%\\x %Name% %%"), ["Name"]);
    }

    fn fails_with(edit: (&str, &str), want: &str) {
        assert!(INF.contains(edit.0), "{}", edit.0);
        let e = lint(&INF.replacen(edit.0, edit.1, 1), "rhax.sys").unwrap_err();
        assert!(e.contains(want), "{want} not in {e}");
    }

    #[test]
    fn each_defect_is_found() {
        fails_with(
            (
                "AddService = rhax,,Rhax.Service",
                "AddService = rhax,,Rhax.Servic",
            ),
            "missing section [Rhax.Servic]",
        );
        fails_with(
            ("[DefaultUninstall]", "[DefaultUninstal]"),
            "[DefaultUninstall]",
        );
        fails_with(
            (
                "DisplayName   = %HaxmDisplayName%",
                "DisplayName = %HaxmName%",
            ),
            "%HaxmName%",
        );
        fails_with(
            (
                "StartType     = 3                       ; SERVICE_DEMAND_START\n",
                "StartType = 2\n",
            ),
            "[IntelHaxm.Service] StartType = 2, expected 3",
        );
        fails_with(
            (
                "ServiceBinary = %12%\\rhax.sys\n\n; ---",
                "ServiceBinary = %12%\\hax.sys\n\n; ---",
            ),
            "[Rhax.Service] ServiceBinary",
        );
        fails_with(
            ("DelService = IntelHaxm", "DelService = rhax"),
            "does not delete the service IntelHaxm",
        );
        fails_with(("\"$WINDOWS NT$\"", "\"$CHICAGO$\""), "Signature");
        // The image renamed: the INF no longer matches it.
        let e = lint(INF, "hax.sys").unwrap_err();
        assert!(
            e.contains("[SourceDisksFiles] does not list hax.sys"),
            "{e}"
        );
    }
}
