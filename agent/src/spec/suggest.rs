//! "Did you mean ...?" for misspelt field names, keywords and references.

/// How alike two names must be (Jaro-Winkler, case-insensitive) to suggest one for the other.
/// 0.8 catches a dropped or doubled letter and a truncated name (`nextHopIp` for
/// `nextHopIpAddress`) without pairing unrelated short words.
const SIMILARITY: f64 = 0.8;

/// The candidate closest to `input`, if one is close enough.
pub(crate) fn closest<'a>(
    input: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let input = input.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|candidate| {
            (
                strsim::jaro_winkler(&input, &candidate.to_ascii_lowercase()),
                candidate,
            )
        })
        .filter(|(score, _)| *score >= SIMILARITY)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, candidate)| candidate)
}

/// `", did you mean X?"` or nothing: appended to a message.
pub(crate) fn did_you_mean<'a>(
    input: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> String {
    closest(input, candidates).map_or_else(String::new, |name| format!(", did you mean {name}?"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        let fields = [
            "name",
            "interface",
            "primaryIpAddress",
            "secondaryIpAddresses",
            "maxPods",
        ];
        assert_eq!(closest("primaryIpAdress", fields), Some("primaryIpAddress"));
        assert_eq!(
            closest("PrimaryIPAddress", fields),
            Some("primaryIpAddress")
        );
        assert_eq!(closest("maxpod", fields), Some("maxPods"));
        assert_eq!(closest("iface", fields), None);
        assert_eq!(closest("zones", fields), None);
        assert_eq!(closest("Inbund", ["Inbound", "Outbound"]), Some("Inbound"));
    }
}
