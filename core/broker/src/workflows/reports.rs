//! Reports and real-time inventory: structured SMS reports (`STOCK AMOX
//! 120 ORS 40`, `CASE MEASLES 3`) that a classifier plugin
//! (`stock-report`) read into items are kept as sent (and exported as
//! FHIR Observations), the latest figure per facility and item is rolled
//! up by the location hierarchy, and the responsible workers of the
//! facility's district are told when an item runs out or low, or when
//! cases of a watched disease are reported.
//!
//! Two tallies: a `latest` kind (stock) keeps the last count a facility
//! gave; a `sum` kind (cases) adds every report up.
//!
//! State (the `workflows` key space):
//!
//! ```text
//! R | seq                           one report (its inbound message's seq)
//! I | kind 0 facility 0 item        the facility's figure for the item
//! ```
//!
//! Only the inbound pipeline's task records reports, one page at a time,
//! so the figures' read-modify-write needs no lock beyond the map's.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use mhero_proto::Lane;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use super::bad;
use crate::directory::Directory;
use crate::dispatch::{AudienceSpec, Body, CampaignSpec};
use crate::error::Result;
use crate::store::{Batch, Cf, Engine, Versioned, decode_value, encode};

const REPORT: u8 = b'R';
const FIGURE: u8 = b'I';

/// How a kind of report adds up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Tally {
    /// Each report replaces the facility's figure (a stock count).
    Latest,
    /// Each report adds to it (new cases).
    Sum,
}

/// `[reports]`: which replies are reports, and who hears of a stock-out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReportsConfig {
    /// Report kinds (the classifier's label, which is also the trigger
    /// word's route) and how each adds up.
    pub kinds: BTreeMap<String, Tally>,
    /// Per item code, the stock at or below which the item is low. An
    /// item not named alerts only when it runs out (0).
    pub low_stock: BTreeMap<String, u64>,
    /// Per item code, the cases in one report at or above which the
    /// district is alerted. Items not named do not alert.
    pub case_alerts: BTreeMap<String, u64>,
    /// Who is told: a directory selector, narrowed to the place of kind
    /// `alert_level` that encloses the reporting facility.
    pub notify: String,
    /// The level of the location hierarchy alerts go to (`district`);
    /// the facility's parent where no enclosing place has that kind.
    pub alert_level: String,
    /// Channels alerts go through, in preference order (default: every
    /// channel configured).
    pub channels: Vec<String>,
}

impl Default for ReportsConfig {
    fn default() -> Self {
        Self {
            kinds: [
                ("stock".to_string(), Tally::Latest),
                ("case".to_string(), Tally::Sum),
            ]
            .into(),
            low_stock: BTreeMap::new(),
            case_alerts: [
                ("CHOLERA".to_string(), 1),
                ("EBOLA".to_string(), 1),
                ("MEASLES".to_string(), 1),
            ]
            .into(),
            notify: "role:pharmacist OR role:doctor".into(),
            alert_level: "district".into(),
            channels: Vec::new(),
        }
    }
}

impl ReportsConfig {
    pub fn validate(&self, channels: &[&str]) -> std::result::Result<(), String> {
        Directory::parse(&self.notify).map_err(|e| format!("reports.notify: {e}"))?;
        for c in &self.channels {
            if !channels.contains(&c.as_str()) {
                return Err(format!("reports.channels: there is no channel {c:?}"));
            }
        }
        if self.kinds.is_empty() {
            return Err("reports.kinds: name at least one kind (stock = \"latest\")".into());
        }
        Ok(())
    }
}

/// One report as received.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Report {
    /// Its inbound message's seq.
    pub seq: u64,
    /// `stock`, `case`.
    pub kind: String,
    /// The reporting worker's directory number.
    pub contact: u32,
    /// The worker's source resource (`Practitioner/123`).
    pub source: Option<String>,
    /// `Location/…`: the worker's facility.
    pub facility: String,
    /// Item code → count, as the classifier read them.
    pub items: Vec<(String, u64)>,
    /// When the message arrived (ms).
    pub at_ms: u64,
    pub channel: String,
}

impl Versioned for Report {
    const VERSION: u8 = 1;
}

/// Where an item stands at a facility.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Level {
    Ok,
    Low,
    Out,
}

/// A facility's figure for one item.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Figure {
    /// The stock counted last (latest), or every case reported (sum).
    pub quantity: u64,
    /// The last report's own count.
    pub last: u64,
    pub at_ms: u64,
    /// The last report taken (a page processed again adds nothing).
    pub seq: u64,
    pub contact: u32,
    pub reports: u64,
    /// Stock kinds: where it stood at the last report.
    pub level: Level,
}

impl Versioned for Figure {
    const VERSION: u8 = 1;
}

/// What the district is told about one report.
#[derive(Clone, Debug, PartialEq)]
pub struct Alert {
    pub report: Report,
    /// (item, count, level): `Out`/`Low` for stock, `Out` for cases over
    /// their alert.
    pub items: Vec<(String, u64, Level)>,
}

/// One place's roll-up for one item.
#[derive(Clone, Debug, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Row {
    /// `Location/…`.
    pub place: String,
    pub name: String,
    /// The place's kind (`country`, `county`, `district`, `facility`).
    pub level: Option<String>,
    pub item: String,
    /// Facilities inside it that reported the item.
    pub facilities: u64,
    /// Their stock added up (latest), or every case (sum).
    pub quantity: u64,
    /// Facilities out of the item, and low on it (stock kinds).
    pub stocked_out: u64,
    pub low: u64,
    pub last_report_ms: u64,
}

type Key = (String, String, String);

pub struct Reports {
    engine: Arc<dyn Engine>,
    config: ReportsConfig,
    /// (kind, facility, item) → figure.
    figures: RwLock<BTreeMap<Key, Figure>>,
}

impl Reports {
    /// Loads the figures from the store.
    pub fn open(engine: Arc<dyn Engine>, config: ReportsConfig) -> Result<Self> {
        let mut figures = BTreeMap::new();
        let mut failure = None;
        engine.scan(Cf::Workflows, &[FIGURE], &[FIGURE + 1], &mut |k, v| {
            match (figure_from(k), decode_value::<Figure>(v)) {
                (Some(key), Ok(f)) => {
                    figures.insert(key, f);
                }
                (None, _) => failure = Some(bad(k, "not a figure key".into())),
                (_, Err(m)) => failure = Some(bad(k, m)),
            }
            Ok(true)
        })?;
        if let Some(e) = failure {
            return Err(e);
        }
        Ok(Self {
            engine,
            config,
            figures: RwLock::new(figures),
        })
    }

    pub fn config(&self) -> &ReportsConfig {
        &self.config
    }

    /// How a label adds up, if it is a report kind.
    pub fn tally(&self, label: &str) -> Option<Tally> {
        self.config.kinds.get(label).copied()
    }

    /// Takes a page's reports: their writes, and the alerts they raise.
    /// The figures change at once; a report already taken (the same page
    /// processed again after a failed commit) changes nothing but is
    /// written again, so the retry's batch has it.
    pub fn record(&self, reports: Vec<Report>) -> (Batch, Vec<Alert>) {
        let mut batch = Batch::new();
        let mut alerts = Vec::new();
        let mut figures = self.figures.write();
        for report in reports {
            let Some(tally) = self.tally(&report.kind) else {
                continue;
            };
            let mut raised = Vec::new();
            for (item, n) in &report.items {
                let key = (report.kind.clone(), report.facility.clone(), item.clone());
                let fresh = figures.get(&key).is_none_or(|f| f.seq < report.seq);
                if fresh {
                    let before = figures.get(&key).cloned();
                    let quantity = match (tally, &before) {
                        (Tally::Sum, Some(b)) => b.quantity.saturating_add(*n),
                        _ => *n,
                    };
                    let level = match tally {
                        Tally::Latest if *n == 0 => Level::Out,
                        Tally::Latest
                            if self.config.low_stock.get(item).is_some_and(|low| n <= low) =>
                        {
                            Level::Low
                        }
                        Tally::Latest => Level::Ok,
                        Tally::Sum => Level::Ok,
                    };
                    let worse = level > before.as_ref().map_or(Level::Ok, |b| b.level);
                    match tally {
                        Tally::Latest if worse => raised.push((item.clone(), *n, level)),
                        Tally::Sum
                            if self.config.case_alerts.get(item).is_some_and(|at| n >= at) =>
                        {
                            raised.push((item.clone(), *n, Level::Out));
                        }
                        _ => {}
                    }
                    figures.insert(
                        key.clone(),
                        Figure {
                            quantity,
                            last: *n,
                            at_ms: report.at_ms,
                            seq: report.seq,
                            contact: report.contact,
                            reports: before.map_or(0, |b| b.reports) + 1,
                            level,
                        },
                    );
                }
                batch.put(Cf::Workflows, figure_key(&key), encode(&figures[&key]));
            }
            batch.put(Cf::Workflows, report_key(report.seq), encode(&report));
            if !raised.is_empty() {
                alerts.push(Alert {
                    report,
                    items: raised,
                });
            }
        }
        (batch, alerts)
    }

    /// Reports in arrival order after `after`, at most `limit`.
    pub fn reports(&self, after: Option<u64>, limit: usize) -> Result<Vec<Report>> {
        let from = report_key(after.map_or(0, |a| a + 1));
        let mut out = Vec::new();
        let mut failure = None;
        self.engine
            .scan(Cf::Workflows, &from, &[REPORT + 1], &mut |k, v| {
                match decode_value::<Report>(v) {
                    Ok(r) => out.push(r),
                    Err(m) => {
                        failure = Some(bad(k, m));
                        return Ok(false);
                    }
                }
                Ok(out.len() < limit)
            })?;
        match failure {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// A facility's figure for an item.
    pub fn figure(&self, kind: &str, facility: &str, item: &str) -> Option<Figure> {
        self.figures
            .read()
            .get(&(kind.into(), facility.into(), item.into()))
            .cloned()
    }

    /// The figures of one kind rolled up by the location hierarchy: a row
    /// per place and item, for the places inside `within` (itself
    /// included; every place when `None`) whose kind is `level` (every
    /// level when `None`). Rows with stock-outs first, then by place.
    pub fn rollup(
        &self,
        directory: &Directory,
        kind: &str,
        within: Option<&str>,
        level: Option<&str>,
    ) -> Vec<Row> {
        let figures: Vec<(String, String, Figure)> = self
            .figures
            .read()
            .iter()
            .filter(|((k, _, _), _)| k == kind)
            .map(|((_, f, i), x)| (f.clone(), i.clone(), x.clone()))
            .collect();
        let mut up: HashMap<String, Vec<(String, crate::directory::Place)>> = HashMap::new();
        let mut rows: BTreeMap<(String, String), Row> = BTreeMap::new();
        for (facility, item, f) in figures {
            let places = up
                .entry(facility.clone())
                .or_insert_with(|| directory.places_up(&facility));
            let upto = match within {
                None => places.len(),
                Some(w) => match places.iter().position(|(p, _)| p == w) {
                    Some(i) => i + 1,
                    None => continue,
                },
            };
            for (id, place) in &places[..upto] {
                if level.is_some_and(|l| place.kind.as_deref() != Some(l)) {
                    continue;
                }
                let row = rows
                    .entry((id.clone(), item.clone()))
                    .or_insert_with(|| Row {
                        place: id.clone(),
                        name: place.name.clone(),
                        level: place.kind.clone(),
                        item: item.clone(),
                        ..Row::default()
                    });
                row.facilities += 1;
                row.quantity = row.quantity.saturating_add(f.quantity);
                match f.level {
                    Level::Out => row.stocked_out += 1,
                    Level::Low => row.low += 1,
                    Level::Ok => {}
                }
                row.last_report_ms = row.last_report_ms.max(f.at_ms);
            }
        }
        let mut rows: Vec<Row> = rows.into_values().collect();
        rows.sort_by(|a, b| {
            (b.stocked_out, b.low)
                .cmp(&(a.stocked_out, a.low))
                .then_with(|| (&a.place, &a.item).cmp(&(&b.place, &b.item)))
        });
        rows
    }

    /// The campaign that tells the district of an alert: the configured
    /// selector within the place of the alert level that encloses the
    /// facility. `None` when the facility is in no known place.
    pub fn alert_campaign(
        &self,
        directory: &Directory,
        alert: &Alert,
        reporter: &str,
        channels: Vec<String>,
        now_ms: u64,
    ) -> Option<CampaignSpec> {
        let places = directory.places_up(&alert.report.facility);
        let facility_name = places
            .first()
            .map(|(_, p)| p.name.clone())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| alert.report.facility.clone());
        let area = places
            .iter()
            .skip(1)
            .find(|(_, p)| p.kind.as_deref() == Some(self.config.alert_level.as_str()))
            .or_else(|| places.get(1))?;
        let area_name = if area.1.name.is_empty() {
            area.0.clone()
        } else {
            area.1.name.clone()
        };
        let list = |fr: bool| {
            alert
                .items
                .iter()
                .map(
                    |(item, n, level)| match (self.tally(&alert.report.kind), level, fr) {
                        (Some(Tally::Sum), _, false) => format!("{item}: {n} cases"),
                        (Some(Tally::Sum), _, true) => format!("{item} : {n} cas"),
                        (_, Level::Out, false) => format!("{item} stocked out"),
                        (_, Level::Out, true) => format!("{item} en rupture"),
                        (_, _, false) => format!("{item} low ({n} left)"),
                        (_, _, true) => format!("{item} bas ({n} restants)"),
                    },
                )
                .collect::<Vec<_>>()
                .join(", ")
        };
        let cases = self.tally(&alert.report.kind) == Some(Tally::Sum);
        let (en, fr) = if cases {
            (
                format!(
                    "mHero alert, {area_name}: {} reported at {facility_name} by {reporter}.",
                    list(false)
                ),
                format!(
                    "Alerte mHero, {area_name} : {} signalés à {facility_name} par {reporter}.",
                    list(true)
                ),
            )
        } else {
            (
                format!(
                    "mHero stock alert, {area_name}: {} at {facility_name} (reported by {reporter}).",
                    list(false)
                ),
                format!(
                    "Alerte stock mHero, {area_name} : {} à {facility_name} (signalé par {reporter}).",
                    list(true)
                ),
            )
        };
        let mut body = Body::text(&en);
        body.variants.insert("fr".into(), fr);
        Some(CampaignSpec {
            name: format!(
                "{} alert r{}: {facility_name}",
                alert.report.kind, alert.report.seq
            ),
            lane: Lane::High,
            body,
            channels,
            audience: AudienceSpec::Selector(format!(
                "({}) AND location:{}",
                self.config.notify, area.0
            )),
            expires_at_ms: Some(now_ms + 24 * 3_600_000),
            start_at_ms: None,
        })
    }
}

fn report_key(seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(REPORT);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn figure_key((kind, facility, item): &Key) -> Vec<u8> {
    let mut k = vec![FIGURE];
    for (i, part) in [kind, facility, item].into_iter().enumerate() {
        if i > 0 {
            k.push(0);
        }
        k.extend_from_slice(part.as_bytes());
    }
    k
}

fn figure_from(k: &[u8]) -> Option<Key> {
    let rest = std::str::from_utf8(k.strip_prefix(&[FIGURE])?).ok()?;
    let mut parts = rest.split('\0');
    let key = (
        parts.next()?.to_string(),
        parts.next()?.to_string(),
        parts.next()?.to_string(),
    );
    parts.next().is_none().then_some(key)
}

/// The items a classifier read: its fields that are counts, but not its
/// notes (`error`, `warning`, `unknown-item`, `keyword`).
pub fn items(fields: &[(String, String)]) -> Vec<(String, u64)> {
    fields
        .iter()
        .filter(|(name, _)| {
            !matches!(
                name.as_str(),
                "error" | "warning" | "unknown-item" | "keyword" | "language"
            )
        })
        .filter_map(|(name, value)| Some((name.clone(), value.parse().ok()?)))
        .collect()
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn figure_keys_round_trip() {
        let key = ("stock".into(), "Location/F-1".into(), "AMOX".into());
        assert_eq!(figure_from(&figure_key(&key)), Some(key));
        assert_eq!(figure_from(b"Istock\0x"), None);
    }

    #[test]
    fn items_skip_the_notes() {
        let fields = vec![
            ("AMOX".to_string(), "120".to_string()),
            ("error".to_string(), "ORS: no quantity".to_string()),
            ("unknown-item".to_string(), "XYZ".to_string()),
            ("ZINC".to_string(), "0".to_string()),
        ];
        assert_eq!(
            items(&fields),
            vec![("AMOX".to_string(), 120), ("ZINC".to_string(), 0)]
        );
    }
}
