//! What a plugin's name and version may look like (checked by `config` when a pipeline
//! names one and by `sandbox` when a component describes itself).

/// Checks a plugin name: a lower-case letter, then lower-case letters, digits or `-`.
pub fn valid_plugin_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 64
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// Checks a version: `MAJOR.MINOR.PATCH`, optionally with a `-pre` suffix.
pub fn valid_version(version: &str) -> bool {
    let core = version.split_once('-').map_or(version, |(c, _)| c);
    let parts: Vec<_> = core.split('.').collect();
    parts.len() == 3 && parts.iter().all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
}
