//! The lab's spec (`examples/lab.yaml`) and the edits tests make to it: outbound NAT fields,
//! Public groups, NSGs.
use std::{net::Ipv4Addr, path::Path};

/// The spec the lab runs (`examples/lab.yaml`).
pub fn lab_spec() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/lab.yaml");
    std::fs::read_to_string(&path).expect("examples/lab.yaml")
}

/// `spec` with an `outboundNat` section of `fields` (YAML lines at the section's indentation,
/// e.g. `portRange: "40000-40015"`). The lab's spec has none, so the section is appended.
pub fn with_outbound_nat(spec: &str, fields: &[&str]) -> String {
    assert!(
        !spec.lines().any(|l| l.starts_with("outboundNat:")),
        "the spec already has an outboundNat section"
    );
    let mut out = spec.trim_end().to_string();
    out.push_str("\noutboundNat:\n");
    for f in fields {
        out.push_str(&format!("  {f}\n"));
    }
    out
}

/// `spec` with one more container group: a Public group `name` in subnet `apps` with the
/// public address `public_ip`, exposing TCP `port` (its one container declares it).
pub fn with_public_group(spec: &str, name: &str, public_ip: Ipv4Addr, port: u16) -> String {
    with_public_group_ports(spec, name, public_ip, &[port])
}

/// [`with_public_group`] exposing every TCP port of `ports` (its one container declares them
/// all).
pub fn with_public_group_ports(
    spec: &str,
    name: &str,
    public_ip: Ipv4Addr,
    ports: &[u16],
) -> String {
    let list = |f: &dyn Fn(u16) -> String| ports.iter().map(|p| f(*p)).collect::<Vec<_>>();
    let exposed = list(&|p| format!("{{ protocol: TCP, port: {p} }}")).join(", ");
    let declared = list(&|p| format!("{{ port: {p} }}")).join(", ");
    let group = format!(
        "  - name: {name}
    location: westeurope
    properties:
      osType: Linux
      subnetIds: [{{ id: apps }}]
      ipAddress:
        type: Public
        ip: {public_ip}
        ports: [{exposed}]
      containers:
        - name: {name}
          properties: {{ image: {name}, ports: [{declared}] }}
"
    );
    let at = spec
        .find("\ncontainerGroups:\n")
        .map(|i| i + "\ncontainerGroups:\n".len())
        .expect("the spec has a containerGroups section");
    format!("{}{group}{}", &spec[..at], &spec[at..])
}

/// One security rule of an NSG for [`with_nsg`]: any protocol, from any address and port to any
/// address and port, until narrowed with the builder methods. Written in the singular form for
/// one value and the plural form (`...Prefixes`, `...Ranges`) for several.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NsgRule {
    pub name: String,
    /// 100..=4096, unique per direction in an NSG.
    pub priority: u16,
    /// `Inbound` or `Outbound`.
    pub direction: &'static str,
    /// `Allow` or `Deny`.
    pub access: &'static str,
    /// `Tcp`, `Udp`, `Icmp`, ... or `*`.
    pub protocol: &'static str,
    /// Address prefixes or service tags (`VirtualNetwork`, `Internet`, ...).
    pub sources: Vec<String>,
    pub destinations: Vec<String>,
    /// `N`, `N-M` or `*`.
    pub destination_ports: Vec<String>,
}

impl NsgRule {
    fn new(name: &str, priority: u16, direction: &'static str, access: &'static str) -> NsgRule {
        NsgRule {
            name: name.into(),
            priority,
            direction,
            access,
            protocol: "*",
            sources: vec!["*".into()],
            destinations: vec!["*".into()],
            destination_ports: vec!["*".into()],
        }
    }

    pub fn allow_in(name: &str, priority: u16) -> NsgRule {
        Self::new(name, priority, "Inbound", "Allow")
    }

    pub fn deny_in(name: &str, priority: u16) -> NsgRule {
        Self::new(name, priority, "Inbound", "Deny")
    }

    pub fn allow_out(name: &str, priority: u16) -> NsgRule {
        Self::new(name, priority, "Outbound", "Allow")
    }

    pub fn deny_out(name: &str, priority: u16) -> NsgRule {
        Self::new(name, priority, "Outbound", "Deny")
    }

    pub fn tcp(self) -> NsgRule {
        NsgRule {
            protocol: "Tcp",
            ..self
        }
    }

    pub fn udp(self) -> NsgRule {
        NsgRule {
            protocol: "Udp",
            ..self
        }
    }

    pub fn from<S: ToString>(self, prefixes: impl IntoIterator<Item = S>) -> NsgRule {
        NsgRule {
            sources: prefixes.into_iter().map(|p| p.to_string()).collect(),
            ..self
        }
    }

    pub fn to<S: ToString>(self, prefixes: impl IntoIterator<Item = S>) -> NsgRule {
        NsgRule {
            destinations: prefixes.into_iter().map(|p| p.to_string()).collect(),
            ..self
        }
    }

    pub fn ports<S: ToString>(self, ranges: impl IntoIterator<Item = S>) -> NsgRule {
        NsgRule {
            destination_ports: ranges.into_iter().map(|p| p.to_string()).collect(),
            ..self
        }
    }

    /// The rule as an item of a `securityRules:` list indented by four spaces.
    fn yaml(&self) -> String {
        let quoted = |s: &str| serde_json::Value::from(s).to_string();
        let field = |singular: &str, plural: &str, values: &[String]| match values {
            [one] => format!("        {singular}: {}\n", quoted(one)),
            many => format!(
                "        {plural}: [{}]\n",
                many.iter()
                    .map(|v| quoted(v))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let mut out = format!(
            "      - name: {}\n        priority: {}\n        direction: {}\n        access: {}\n        protocol: {}\n",
            quoted(&self.name),
            self.priority,
            self.direction,
            self.access,
            quoted(self.protocol)
        );
        out.push_str(&field(
            "sourceAddressPrefix",
            "sourceAddressPrefixes",
            &self.sources,
        ));
        out.push_str("        sourcePortRange: \"*\"\n");
        out.push_str(&field(
            "destinationAddressPrefix",
            "destinationAddressPrefixes",
            &self.destinations,
        ));
        out.push_str(&field(
            "destinationPortRange",
            "destinationPortRanges",
            &self.destination_ports,
        ));
        out
    }
}

/// `spec` with the network security group `nsg` of `rules` (the default rules are always
/// there), associated with each subnet of `subnets` (which must have no NSG yet). Adds a
/// `networkSecurityGroups` section, or the NSG to the one there is.
pub fn with_nsg(spec: &str, nsg: &str, subnets: &[&str], rules: &[NsgRule]) -> String {
    let mut group = match rules {
        [] => format!("  - name: {nsg}\n    securityRules: []\n"),
        _ => format!("  - name: {nsg}\n    securityRules:\n"),
    };
    for rule in rules {
        group.push_str(&rule.yaml());
    }
    const SECTION: &str = "\nnetworkSecurityGroups:\n";
    let mut out = match spec.find(SECTION) {
        Some(i) => {
            let at = i + SECTION.len();
            format!("{}{group}{}", &spec[..at], &spec[at..])
        }
        None => format!("{}{SECTION}{group}", spec.trim_end()),
    };
    let subnets_at = out
        .find("\n  subnets:\n")
        .expect("the spec has a subnets list under virtualNetwork");
    for subnet in subnets {
        let line = format!("\n    - name: {subnet}\n");
        let at = out[subnets_at..]
            .find(&line)
            .map(|i| subnets_at + i + line.len())
            .unwrap_or_else(|| panic!("the spec has no subnet {subnet}"));
        let has_nsg = out[at..]
            .lines()
            .take_while(|l| l.starts_with("      "))
            .any(|l| l.trim_start().starts_with("networkSecurityGroup:"));
        assert!(!has_nsg, "subnet {subnet} already has an NSG");
        out.insert_str(at, &format!("      networkSecurityGroup: {nsg}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vnetd::{bin, validate};

    /// The edits give specs the agent accepts (`vnetd validate`, when the binary is built).
    #[test]
    fn spec_edits_validate() {
        let specs = [
            with_outbound_nat(&lab_spec(), &["portRange: \"40000-40015\""]),
            with_outbound_nat(&lab_spec(), &["nonMasqueradeCidrs: [198.51.100.0/24]"]),
            with_public_group(&lab_spec(), "web", Ipv4Addr::new(203, 0, 113, 20), 8080),
            with_public_group_ports(
                &lab_spec(),
                "web",
                Ipv4Addr::new(203, 0, 113, 20),
                &[8001, 8002],
            ),
            with_nsg(
                &with_nsg(
                    &lab_spec(),
                    "apps-nsg",
                    &["apps"],
                    &[
                        NsgRule::deny_in("deny-some", 100)
                            .tcp()
                            .from(["10.0.2.10/31", "198.51.100.0/24"])
                            .ports(["8000-8080", "9000"]),
                        NsgRule::allow_in("allow-vnet", 110).from(["VirtualNetwork"]),
                        NsgRule::deny_out("deny-smtp-out", 100)
                            .tcp()
                            .to(["198.51.100.10"])
                            .ports(["25"]),
                    ],
                ),
                "aci-nsg",
                &["aci", "nodes"],
                &[],
            ),
        ];
        let vnetd = bin("vnetd");
        if !vnetd.exists() {
            eprintln!(
                "{} not built: checking the edits' text only",
                vnetd.display()
            );
        }
        let nsgs = &specs[4];
        assert!(
            nsgs.contains(
                "    - name: apps\n      networkSecurityGroup: apps-nsg\n      addressPrefix:"
            ) && nsgs
                .contains("      networkSecurityGroup: aci-nsg\n      addressPrefix: 10.0.1.0/24")
                && nsgs.contains("sourceAddressPrefixes: [\"10.0.2.10/31\", \"198.51.100.0/24\"]")
                && nsgs.contains("destinationPortRange: \"25\""),
            "{nsgs}"
        );
        for spec in &specs {
            assert_ne!(*spec, lab_spec());
            if let Some(Err(problem)) = validate(spec) {
                panic!("{spec}\n{problem}");
            }
        }
    }
}
