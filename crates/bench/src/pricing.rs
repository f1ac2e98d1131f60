//! Instance prices and $/1M tokens.
//!
//! `$/1M tokens = price_per_hour / (tok_per_s × 3600 / 1e6)`. The price comes from
//! `--price-per-hour` when given, otherwise from the embedded table `models/instances.toml`
//! (us-east-1 Linux on-demand, AWS Pricing API snapshot 2026-07-20).

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::sync::OnceLock;

/// The table as committed, embedded at build time.
pub const INSTANCES_TOML: &str = include_str!("../instances.toml");

/// One row of `models/instances.toml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Instance {
    /// EC2 instance type, e.g. `inf2.xlarge`.
    pub name: String,
    /// Accelerator marketing name, e.g. `Inferentia2`, `NVIDIA A10G`.
    pub accelerator: String,
    /// `neuron` or `nvidia`.
    pub accelerator_kind: String,
    pub accelerator_count: u32,
    /// Total accelerator memory as AWS states it, e.g. `32 GiB`, `24 GB`.
    pub accelerator_memory: String,
    pub vcpus: Option<u32>,
    /// Host memory, GiB.
    pub memory_gib: Option<u32>,
    /// On-demand USD per hour; `None` when the snapshot had no price.
    pub price_per_hour_usd: Option<f64>,
    pub region: String,
    pub source: String,
    /// Date of the price snapshot, `YYYY-MM-DD`.
    pub date: String,
}

/// The instance table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Instances {
    #[serde(rename = "instance")]
    pub instances: Vec<Instance>,
}

/// A price chosen for a cost figure, with where it came from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Price {
    pub per_hour_usd: f64,
    /// Human-readable origin, e.g. `--price-per-hour` or
    /// `AWS Pricing API snapshot 2026-07-20, us-east-1 on-demand`.
    pub source: String,
    /// The instance the price is for, when known.
    pub instance_type: Option<String>,
}

impl Instances {
    /// The embedded `models/instances.toml`, parsed once.
    ///
    /// # Panics
    /// Never in a build whose tests pass: the embedded table is checked by a unit test.
    pub fn embedded() -> &'static Instances {
        static TABLE: OnceLock<Instances> = OnceLock::new();
        TABLE.get_or_init(|| {
            Instances::parse(INSTANCES_TOML).expect("models/instances.toml is valid")
        })
    }

    /// Parses a table in the `models/instances.toml` format.
    pub fn parse(text: &str) -> Result<Instances> {
        let t: Instances = toml::from_str(text).map_err(|e| Error::Table(e.to_string()))?;
        for i in &t.instances {
            if let Some(p) = i.price_per_hour_usd {
                if !(p.is_finite() && p > 0.0) {
                    return Err(Error::Table(format!(
                        "{}: price_per_hour_usd must be positive, got {p}",
                        i.name
                    )));
                }
            }
        }
        Ok(t)
    }

    /// The row for an instance type (exact name, case-insensitive).
    pub fn lookup(&self, name: &str) -> Option<&Instance> {
        let name = name.trim();
        self.instances
            .iter()
            .find(|i| i.name.eq_ignore_ascii_case(name))
    }

    /// Instance names, in table order.
    pub fn names(&self) -> Vec<&str> {
        self.instances.iter().map(|i| i.name.as_str()).collect()
    }

    /// The price to use: `price_per_hour` (the `--price-per-hour` flag) when given, otherwise the
    /// table's price for `instance`. Errors tell the user to pass `--price-per-hour`.
    pub fn resolve_price(
        &self,
        instance: Option<&str>,
        price_per_hour: Option<f64>,
    ) -> Result<Price> {
        if let Some(p) = price_per_hour {
            if !(p.is_finite() && p > 0.0) {
                return Err(Error::Price(format!(
                    "--price-per-hour must be a positive number of USD, got {p}"
                )));
            }
            return Ok(Price {
                per_hour_usd: p,
                source: "--price-per-hour".into(),
                instance_type: instance.map(str::to_string),
            });
        }
        let Some(name) = instance else {
            return Err(Error::Price(
                "no instance type is known (not detected, no --instance or SILICA_INSTANCE), so \
                 there is no price: pass --price-per-hour USD to get $/1M-token figures"
                    .into(),
            ));
        };
        let Some(row) = self.lookup(name) else {
            return Err(Error::Price(format!(
                "instance {name:?} is not in the price table (known: {}); pass --price-per-hour USD",
                self.names().join(", ")
            )));
        };
        match row.price_per_hour_usd {
            Some(p) => Ok(Price {
                per_hour_usd: p,
                source: format!("{} {}, {} on-demand", row.source, row.date, row.region),
                instance_type: Some(row.name.clone()),
            }),
            None => Err(Error::Price(format!(
                "{} has no {} on-demand price in the {} snapshot ({}); pass --price-per-hour USD",
                row.name, row.region, row.date, row.source
            ))),
        }
    }
}

/// USD per million tokens at `tok_per_s` on a machine costing `price_per_hour` USD:
/// `price_per_hour / (tok_per_s × 3600 / 1e6)`. Infinite when `tok_per_s` is 0.
pub fn usd_per_million(price_per_hour: f64, tok_per_s: f64) -> f64 {
    price_per_hour / (tok_per_s * 3600.0 / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn embedded_table_has_the_design_prices() {
        let t = Instances::embedded();
        let want = [
            ("inf2.xlarge", 0.7582),
            ("inf2.8xlarge", 1.96786),
            ("inf2.24xlarge", 6.49063),
            ("inf2.48xlarge", 12.98127),
            ("trn1.2xlarge", 1.34375),
            ("trn1.32xlarge", 21.50),
            ("trn1n.32xlarge", 24.78),
            ("g5.xlarge", 1.006),
            ("g5.12xlarge", 5.672),
            ("g6.xlarge", 0.8048),
            ("g6e.xlarge", 1.861),
            ("p4d.24xlarge", 21.957642),
            ("p5.48xlarge", 55.04),
        ];
        for (name, price) in want {
            let row = t.lookup(name).unwrap_or_else(|| panic!("{name} missing"));
            assert_eq!(row.price_per_hour_usd, Some(price), "{name}");
            assert_eq!(row.region, "us-east-1");
            assert_eq!(row.date, "2026-07-20");
        }
        assert_eq!(t.instances.len(), want.len() + 1);
        let trn2 = t.lookup("trn2.48xlarge").unwrap();
        assert_eq!(trn2.price_per_hour_usd, None);
        assert_eq!(trn2.accelerator_count, 16);
        assert_eq!(t.lookup("INF2.XLARGE").unwrap().accelerator, "Inferentia2");
        assert!(t.lookup("m5.large").is_none());
    }

    #[test]
    fn dollars_per_million_known_answers() {
        // inf2.xlarge at 100 tok/s: 0.7582 / 0.36 = 2.10611…
        assert!(close(usd_per_million(0.7582, 100.0), 2.106_111, 1e-6));
        // 1 $/h at 1e6/3600 tok/s is exactly 1 $/1M.
        assert!(close(usd_per_million(1.0, 1e6 / 3600.0), 1.0, 1e-12));
        // inf2.48xlarge at the published 859 tok/s (Llama-3-8B BS8): 12.98127/3.0924 = 4.1978
        assert!(close(usd_per_million(12.98127, 859.0), 4.197_798, 1e-6));
        assert!(usd_per_million(1.0, 0.0).is_infinite());
    }

    #[test]
    fn price_resolution_order_and_errors() {
        let t = Instances::embedded();
        let p = t.resolve_price(Some("inf2.xlarge"), None).unwrap();
        assert_eq!(p.per_hour_usd, 0.7582);
        assert!(p.source.contains("2026-07-20"), "{}", p.source);
        // The flag wins over the table.
        let p = t.resolve_price(Some("inf2.xlarge"), Some(0.5)).unwrap();
        assert_eq!(p.per_hour_usd, 0.5);
        assert_eq!(p.source, "--price-per-hour");
        // trn2 needs the flag, and the error says so.
        let e = t
            .resolve_price(Some("trn2.48xlarge"), None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--price-per-hour") && e.contains("trn2.48xlarge"),
            "{e}"
        );
        assert_eq!(
            t.resolve_price(Some("trn2.48xlarge"), Some(40.0))
                .unwrap()
                .per_hour_usd,
            40.0
        );
        let e = t
            .resolve_price(Some("m5.large"), None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not in the price table") && e.contains("--price-per-hour"),
            "{e}"
        );
        let e = t.resolve_price(None, None).unwrap_err().to_string();
        assert!(e.contains("--price-per-hour"), "{e}");
        assert!(t.resolve_price(None, Some(-1.0)).is_err());
        assert!(t.resolve_price(None, Some(f64::NAN)).is_err());
    }

    #[test]
    fn bad_tables_are_rejected() {
        assert!(Instances::parse("[[instance]]\nname = 1\n").is_err());
        let neg = INSTANCES_TOML.replace("0.7582", "-0.7582");
        assert!(Instances::parse(&neg)
            .unwrap_err()
            .to_string()
            .contains("positive"));
    }
}
