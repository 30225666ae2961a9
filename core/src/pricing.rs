//! The credit cost matrix: effective-dated versions of per-feature prices, and pricing a call.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use rustc_hash::FxHashMap;

use crate::credits::Credits;
use crate::names::Name;

/// The whole matrix as written in `config/matrix.toml`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CostMatrix {
    /// Versions in the order they took effect; a call is priced by the last one in force.
    pub versions: Vec<MatrixVersion>,
}

/// One price list, in force from `effective_from` until the next version.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MatrixVersion {
    /// Recorded on every ledger row this version priced.
    pub name: String,
    /// When this version takes effect (RFC 3339).
    pub effective_from: DateTime<Utc>,
    /// Feature name (the event's `data.feature`) to its price.
    pub features: BTreeMap<String, FeaturePrice>,
    /// `features` in a hash table, built when the version first prices a call: every call
    /// looks its feature up, and the B-tree compares names one by one. The matrix is
    /// config, fixed once loaded, so the table never goes stale.
    #[serde(skip)]
    index: OnceLock<Index>,
}

/// A version's features by name, each with its own, its variants' and its pool's shared
/// names, and the version's own name: the names a ledger entry carries, made once per
/// version rather than interned per call.
#[derive(Debug, Clone, Default)]
struct Index {
    features: FxHashMap<String, Indexed>,
    name: Name,
}

/// One feature of an [`Index`].
#[derive(Debug, Clone)]
struct Indexed {
    price: FeaturePrice,
    feature: Name,
    pool: Name,
    /// `price.variants` with each variant's shared name.
    variants: Option<FxHashMap<String, (Credits, Name)>>,
}

impl Indexed {
    fn new(name: &str, price: &FeaturePrice) -> Self {
        Indexed {
            price: price.clone(),
            feature: Name::from(name),
            pool: Name::from(&*price.pool),
            variants: price.variants.as_ref().map(|variants| {
                variants
                    .iter()
                    .map(|(name, &cost)| (name.clone(), (cost, Name::from(&**name))))
                    .collect()
            }),
        }
    }
}

impl MatrixVersion {
    fn index(&self) -> &Index {
        let index = self.index.get_or_init(|| Index {
            features: self
                .features
                .iter()
                .map(|(name, price)| (name.clone(), Indexed::new(name, price)))
                .collect(),
            name: Name::from(&*self.name),
        });
        debug_assert_eq!(
            index.features.len(),
            self.features.len(),
            "features changed after use"
        );
        index
    }
}

/// How one feature is priced. Exactly one of `cost`, `variants` or `per_unit` is set; the
/// result is multiplied by the event's quantity and rounded up to the next thousandth.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FeaturePrice {
    /// Which credit pool pays, e.g. `ai` or `scan`.
    pub pool: String,
    /// A fixed cost per call (per unit of quantity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<Credits>,
    /// Costs by the event's `data.variant`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variants: Option<BTreeMap<String, Credits>>,
    /// A rate per unit of quantity, for metered features.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_unit: Option<Credits>,
    /// What one unit of quantity is, for people reading the matrix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
}

/// What a call costs and who pays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Price<'m> {
    pub credits: Credits,
    pub pool: &'m str,
    pub version: &'m str,
    /// `pool` and `version` as shared names, for the ledger entry.
    pub pool_name: &'m Name,
    pub version_name: &'m Name,
    /// The feature and variant priced, as shared names for the ledger entry (so a call
    /// interns neither).
    pub feature_name: &'m Name,
    pub variant_name: Option<&'m Name>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PriceError {
    #[error("unknown feature `{feature}` in cost matrix version {version}")]
    UnknownFeature { feature: String, version: String },
    #[error("feature `{feature}` needs a variant, one of: {known}")]
    VariantRequired { feature: String, known: String },
    #[error("feature `{feature}` has no variant `{variant}`; known: {known}")]
    UnknownVariant {
        feature: String,
        variant: String,
        known: String,
    },
    /// A variant on a feature priced without variants: refused rather than ignored, so a
    /// caller that thinks it is buying `long` learns it is not.
    #[error("feature `{feature}` has no variants; leave `variant` out")]
    NoVariants { feature: String },
    #[error("no cost matrix version is in force at {0}")]
    NoVersion(DateTime<Utc>),
    #[error("cost overflows for feature `{0}`")]
    Overflow(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct MatrixError {
    /// Where in the matrix, e.g. `versions[1].features.erase`.
    pub key: String,
    pub problem: String,
}

impl CostMatrix {
    /// Checks the matrix without pricing anything: ordered versions, one price form per
    /// feature, no negative cost.
    pub fn validate(&self) -> Result<(), MatrixError> {
        let err = |key: String, problem: &str| MatrixError {
            key,
            problem: problem.to_string(),
        };
        if self.versions.is_empty() {
            return Err(err("versions".into(), "at least one version is required"));
        }
        for (i, version) in self.versions.iter().enumerate() {
            let at = format!("versions[{i}]");
            if version.name.trim().is_empty() {
                return Err(err(format!("{at}.name"), "must not be empty"));
            }
            if i > 0 && version.effective_from <= self.versions[i - 1].effective_from {
                return Err(err(
                    format!("{at}.effective_from"),
                    "must be later than the previous version's",
                ));
            }
            if self.versions[..i].iter().any(|v| v.name == version.name) {
                return Err(err(format!("{at}.name"), "is used by an earlier version"));
            }
            for (name, feature) in &version.features {
                let key = format!("{at}.features.{name}");
                if feature.pool.trim().is_empty() {
                    return Err(err(format!("{key}.pool"), "must not be empty"));
                }
                let forms = [
                    feature.cost.is_some(),
                    feature.variants.is_some(),
                    feature.per_unit.is_some(),
                ];
                if forms.iter().filter(|set| **set).count() != 1 {
                    return Err(err(
                        key,
                        "set exactly one of `cost`, `variants`, `per_unit`",
                    ));
                }
                if let Some(variants) = &feature.variants {
                    if variants.is_empty() {
                        return Err(err(format!("{key}.variants"), "must not be empty"));
                    }
                }
                let negative = feature.cost.is_some_and(Credits::is_negative)
                    || feature.per_unit.is_some_and(Credits::is_negative)
                    || feature
                        .variants
                        .iter()
                        .flat_map(|v| v.values())
                        .any(|c| c.is_negative());
                if negative {
                    return Err(err(key, "a cost must not be negative"));
                }
            }
        }
        Ok(())
    }

    /// The version in force at `at`.
    pub fn version_at(&self, at: DateTime<Utc>) -> Option<&MatrixVersion> {
        let index = self.versions.partition_point(|v| v.effective_from <= at);
        index.checked_sub(1).map(|i| &self.versions[i])
    }

    /// Prices `quantity` of `feature` (and `variant`) by the version in force at `at`.
    pub fn price(
        &self,
        feature: &str,
        variant: Option<&str>,
        quantity: Credits,
        at: DateTime<Utc>,
    ) -> Result<Price<'_>, PriceError> {
        let version = self.version_at(at).ok_or(PriceError::NoVersion(at))?;
        let index = version.index();
        let indexed = index
            .features
            .get(feature)
            .ok_or_else(|| PriceError::UnknownFeature {
                feature: feature.to_string(),
                version: version.name.clone(),
            })?;
        let price = &indexed.price;
        let (unit_cost, variant_name) = match (&indexed.variants, price.cost, price.per_unit) {
            (Some(variants), _, _) => {
                let known = || {
                    let names = price.variants.iter().flat_map(|v| v.keys().cloned());
                    names.collect::<Vec<_>>().join(", ")
                };
                let variant = variant.ok_or_else(|| PriceError::VariantRequired {
                    feature: feature.to_string(),
                    known: known(),
                })?;
                let (cost, name) =
                    variants
                        .get(variant)
                        .ok_or_else(|| PriceError::UnknownVariant {
                            feature: feature.to_string(),
                            variant: variant.to_string(),
                            known: known(),
                        })?;
                (*cost, Some(name))
            }
            (None, _, _) if variant.is_some() => {
                return Err(PriceError::NoVariants {
                    feature: feature.to_string(),
                })
            }
            (None, Some(cost), _) => (cost, None),
            (None, None, Some(rate)) => (rate, None),
            (None, None, None) => (Credits::ZERO, None),
        };
        let credits = unit_cost
            .times(quantity)
            .ok_or_else(|| PriceError::Overflow(feature.to_string()))?;
        Ok(Price {
            credits,
            pool: &price.pool,
            version: &version.name,
            pool_name: &indexed.pool,
            version_name: &index.name,
            feature_name: &indexed.feature,
            variant_name,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix() -> CostMatrix {
        let matrix: CostMatrix = toml::from_str(
            r#"
            [[versions]]
            name = "v1"
            effective_from = "2026-01-01T00:00:00Z"
            [versions.features]
            text_to_image = { pool = "ai", cost = 8 }
            upscale = { pool = "ai", cost = 0 }
            image_generation = { pool = "ai", variants = { short = 5, mid = 10, long = 20 } }
            translation = { pool = "ai", per_unit = "0.002", unit = "character" }
            deep_scan = { pool = "scan", cost = 1 }

            [[versions]]
            name = "v2"
            effective_from = "2026-06-01T00:00:00Z"
            [versions.features]
            text_to_image = { pool = "ai", cost = 9 }
            "#,
        )
        .unwrap();
        matrix.validate().unwrap();
        matrix
    }

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    #[test]
    fn fixed_cost_times_quantity() {
        let m = matrix();
        let p = m
            .price(
                "text_to_image",
                None,
                Credits::from_whole(3),
                at("2026-02-01T00:00:00Z"),
            )
            .unwrap();
        assert_eq!(p.credits, Credits::from_whole(24));
        assert_eq!((p.pool, p.version), ("ai", "v1"));
    }

    #[test]
    fn zero_cost_feature_is_free() {
        let m = matrix();
        let p = m
            .price(
                "upscale",
                None,
                Credits::from_whole(1),
                at("2026-02-01T00:00:00Z"),
            )
            .unwrap();
        assert_eq!(p.credits, Credits::ZERO);
    }

    #[test]
    fn variant_prices_and_errors() {
        let m = matrix();
        let t = at("2026-02-01T00:00:00Z");
        let one = Credits::from_whole(1);
        assert_eq!(
            m.price("image_generation", Some("long"), one, t)
                .unwrap()
                .credits,
            Credits::from_whole(20)
        );
        assert!(matches!(
            m.price("image_generation", None, one, t),
            Err(PriceError::VariantRequired { .. })
        ));
        assert!(matches!(
            m.price("image_generation", Some("huge"), one, t),
            Err(PriceError::UnknownVariant { .. })
        ));
        assert!(matches!(
            m.price("translation", Some("x".repeat(5000).as_str()), one, t),
            Err(PriceError::NoVariants { .. })
        ));
    }

    #[test]
    fn per_unit_rounds_up_to_a_thousandth() {
        // 0.002 x 0.75 = 0.0015, charged as 0.002.
        let m = matrix();
        let p = m
            .price(
                "translation",
                None,
                Credits::from_milli(750),
                at("2026-02-01T00:00:00Z"),
            )
            .unwrap();
        assert_eq!(p.credits, Credits::from_milli(2));
    }

    #[test]
    fn own_pool_for_scans() {
        let m = matrix();
        let p = m
            .price(
                "deep_scan",
                None,
                Credits::from_whole(1),
                at("2026-02-01T00:00:00Z"),
            )
            .unwrap();
        assert_eq!(p.pool, "scan");
    }

    #[test]
    fn the_version_in_force_at_the_call_prices_it() {
        let m = matrix();
        let one = Credits::from_whole(1);
        let before = m
            .price("text_to_image", None, one, at("2026-05-31T23:59:59Z"))
            .unwrap();
        let after = m
            .price("text_to_image", None, one, at("2026-06-01T00:00:00Z"))
            .unwrap();
        assert_eq!(
            (before.credits, before.version),
            (Credits::from_whole(8), "v1")
        );
        assert_eq!(
            (after.credits, after.version),
            (Credits::from_whole(9), "v2")
        );
        // A feature dropped from the newer version is unknown from then on.
        assert!(matches!(
            m.price("upscale", None, one, at("2026-07-01T00:00:00Z")),
            Err(PriceError::UnknownFeature { .. })
        ));
        assert_eq!(
            m.price("text_to_image", None, one, at("2025-12-31T00:00:00Z")),
            Err(PriceError::NoVersion(at("2025-12-31T00:00:00Z")))
        );
    }

    #[test]
    fn unknown_feature_is_an_error_not_free() {
        assert!(matches!(
            matrix().price(
                "teleport",
                None,
                Credits::from_whole(1),
                at("2026-02-01T00:00:00Z")
            ),
            Err(PriceError::UnknownFeature { .. })
        ));
    }

    #[test]
    fn validate_names_the_key() {
        let mut m = matrix();
        m.versions[0].features.get_mut("upscale").unwrap().per_unit = Some(Credits::from_whole(1));
        let e = m.validate().unwrap_err();
        assert_eq!(e.key, "versions[0].features.upscale");
        let mut m = matrix();
        m.versions[1].effective_from = m.versions[0].effective_from;
        assert_eq!(m.validate().unwrap_err().key, "versions[1].effective_from");
    }
}
