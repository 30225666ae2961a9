//! `tally plans` / `GET /v1/plans` and `tally matrix` / `GET /v1/matrix`: what config
//! offers, the same for every account.

use std::collections::BTreeMap;

use serde::Serialize;
use tally_core::plans::Plan;
use tally_core::{CostMatrix, Credits, Rules};

use super::Tabular;

/// The plans in config, by name.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct Plans {
    #[serde(skip)]
    pub default_flex_threshold: Credits,
    pub plans: BTreeMap<String, Plan>,
}

impl Plans {
    pub fn of(rules: &Rules) -> Plans {
        Plans {
            default_flex_threshold: rules.flex_threshold,
            plans: rules.plans.clone(),
        }
    }
}

impl Tabular for Plans {
    fn header(&self) -> Vec<&'static str> {
        vec![
            "plan",
            "credits per cycle",
            "pool",
            "cycle",
            "flex threshold",
        ]
    }

    fn rows(&self) -> Vec<Vec<String>> {
        self.plans
            .iter()
            .map(|(name, plan)| {
                vec![
                    name.clone(),
                    plan.credits.to_string(),
                    plan.pool.clone(),
                    format!("{:?}", plan.period).to_lowercase(),
                    plan.flex_threshold
                        .unwrap_or(self.default_flex_threshold)
                        .to_string(),
                ]
            })
            .collect()
    }
}

/// The cost matrix, every version [004].
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct Matrix {
    pub matrix: CostMatrix,
}

impl Matrix {
    pub fn of(rules: &Rules) -> Matrix {
        Matrix {
            matrix: rules.matrix.clone(),
        }
    }
}

impl Tabular for Matrix {
    fn header(&self) -> Vec<&'static str> {
        vec![
            "version",
            "effective from",
            "feature",
            "pool",
            "variant",
            "credits",
            "unit",
        ]
    }

    fn rows(&self) -> Vec<Vec<String>> {
        let mut rows = Vec::new();
        for v in &self.matrix.versions {
            let from = v.effective_from.format("%Y-%m-%d %H:%M UTC").to_string();
            for (feature, price) in &v.features {
                let mut row = |variant: &str, cost: String, unit: String| {
                    rows.push(vec![
                        v.name.clone(),
                        from.clone(),
                        feature.clone(),
                        price.pool.clone(),
                        variant.to_string(),
                        cost,
                        unit,
                    ])
                };
                if let Some(variants) = &price.variants {
                    for (variant, cost) in variants {
                        row(variant, cost.to_string(), "call".into());
                    }
                } else if let Some(rate) = price.per_unit {
                    let unit = price.unit.clone().unwrap_or_else(|| "unit".into());
                    row("", rate.to_string(), unit);
                } else {
                    let cost = price.cost.unwrap_or_default();
                    row("", cost.to_string(), "call".into());
                }
            }
        }
        rows
    }
}
