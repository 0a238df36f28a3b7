//! The naming rules: Azure resources, ACI groups and containers, node host names, Linux
//! interfaces, DNS labels.

/// Azure's rule for resource names (NSGs, rules, route tables, routes, subnets): 1 to `max`
/// characters, letters, digits, underscores, periods and hyphens, starting with a letter or
/// digit, ending with a letter, digit or underscore.
pub fn azure_name_problem(name: &str, max: usize) -> Option<String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    let ok = !name.is_empty()
        && name.len() <= max
        && name.chars().all(allowed)
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_');
    (!ok).then(|| {
        let shown: String = name.chars().take(90).collect();
        let ellipsis = if name.chars().count() > 90 { "..." } else { "" };
        format!(
            "{shown:?}{ellipsis} is not a valid name: use 1-{max} letters, digits, underscores, periods and hyphens, starting with a letter or digit and ending with a letter, digit or underscore"
        )
    })
}

/// ACI's rule for container group and container names: 1-63 lowercase letters, digits and
/// hyphens, not starting or ending with a hyphen.
pub fn aci_name_problem(name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    (!ok).then(|| {
        format!("{name:?} is not a valid name: use 1-63 lowercase letters, digits and hyphens, not starting or ending with a hyphen")
    })
}

/// Node names become host names and directory names: 1-63 letters, digits, hyphens,
/// underscores and periods, starting with a letter or digit.
pub(super) fn host_name_problem(name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric());
    (!ok).then(|| {
        format!("{name:?} is not a valid node name: use 1-63 letters, digits, hyphens, underscores and periods, starting with a letter or digit")
    })
}

/// Linux interface names: 1-15 bytes (IFNAMSIZ - 1), no `/`, `:` or white space, not `.` or
/// `..`.
pub(super) fn interface_name_problem(name: &str) -> Option<String> {
    (!is_valid_ifname(name)).then(|| {
        format!("{name:?} is not a Linux interface name: 1-15 characters, no '/', ':' or spaces")
    })
}

/// Linux's rule for interface names (the kernel's `dev_valid_name`): 1 to 15 bytes, not `.` or
/// `..`, no `/`, `:` or whitespace. The one definition: the spec's `interface` and the CNI
/// plugin's `CNI_IFNAME` are both checked with it.
pub fn is_valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
}

/// RFC 1123 label: 1-63 letters, digits and hyphens, starting and ending with a letter or digit.
pub fn is_dns_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !label.starts_with('-')
        && !label.ends_with('-')
}
