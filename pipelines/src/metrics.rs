//! Instruments that components update and operators read: counters,
//! gauges and histograms in a [`Registry`], rendered in the Prometheus
//! text format (version 0.0.4).
//!
//! Every component is handed the server's registry and registers its
//! instruments once, when it starts; updating one is an atomic add, with
//! no lock and no allocation, so the data path can count every event.
//! Values that something else already holds (the outbox's pending
//! messages, the log's size on disk) are read when the registry is
//! rendered, through a closure. Labels come from bounded sets (a reason
//! code, an endpoint, a view), never from a fridge id. A component built
//! without a server gets [`Registry::default`], which nobody reads.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A count that only goes up.
#[derive(Clone, Default, Debug)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The count.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Clone, Default, Debug)]
pub struct Gauge(Arc<AtomicU64>);

impl Gauge {
    /// Sets it.
    pub fn set(&self, value: f64) {
        self.0.store(value.to_bits(), Ordering::Relaxed);
    }

    /// Adds `delta` (negative to subtract).
    pub fn add(&self, delta: f64) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| Some((f64::from_bits(bits) + delta).to_bits()));
    }

    /// The value.
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// Bucket bounds for latencies in seconds: 100 µs to 60 s.
pub const LATENCY_SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Bucket bounds for sizes counted in records or messages: 1 to 100,000.
pub const SIZES: &[f64] = &[1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 100_000.0];

/// Observations counted in buckets by upper bound, with their sum.
#[derive(Clone, Debug)]
pub struct Histogram(Arc<HistogramCells>);

#[derive(Debug)]
struct HistogramCells {
    bounds: &'static [f64],
    /// One per bound, and the last for `+Inf`; not cumulative.
    counts: Vec<AtomicU64>,
    /// The sum, as `f64` bits.
    sum: AtomicU64,
}

impl Histogram {
    /// A histogram with these bucket bounds, in increasing order.
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram(Arc::new(HistogramCells {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }))
    }

    /// Counts one observation of `value`.
    pub fn observe(&self, value: f64) {
        let cells = &self.0;
        let bucket = cells.bounds.partition_point(|bound| *bound < value);
        cells.counts[bucket].fetch_add(1, Ordering::Relaxed);
        let _ = cells
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| Some((f64::from_bits(bits) + value).to_bits()));
    }

    /// Counts one observation of a duration, in seconds.
    pub fn observe_duration(&self, duration: std::time::Duration) {
        self.observe(duration.as_secs_f64());
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.0.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// The sum of the observations so far.
    pub fn sum(&self) -> f64 {
        f64::from_bits(self.0.sum.load(Ordering::Relaxed))
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new(LATENCY_SECONDS)
    }
}

/// What the registry reads a series' value from.
enum Cell {
    Counter(Counter),
    Gauge(Gauge),
    Histogram(Histogram),
    /// Read when rendered.
    Read(Box<dyn Fn() -> f64 + Send + Sync>),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

struct Family {
    name: String,
    help: String,
    kind: Kind,
    series: Vec<(Vec<(String, String)>, Cell)>,
}

/// Where a server's instruments are registered. Cheap to clone: every
/// clone is the same registry.
#[derive(Clone, Default)]
pub struct Registry {
    families: Arc<Mutex<Vec<Family>>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Registry({} families)", self.lock().len())
    }
}

/// A series' labels: `&[("endpoint", "procurement")]`.
pub type Labels<'a> = &'a [(&'a str, &'a str)];

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Family>> {
        // Registering and rendering cannot panic halfway: the lock is never poisoned by them.
        self.families.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers a series; the same name and labels registered again keep
    /// the first cell (a component started twice counts on).
    fn register(&self, name: &str, help: &str, kind: Kind, labels: Labels<'_>, cell: impl FnOnce() -> Cell) -> Cell {
        debug_assert!(valid_name(name), "{name} is not a metric name");
        debug_assert!(kind != Kind::Counter || name.ends_with("_total"), "counter {name} must end in _total");
        let labels: Vec<(String, String)> = labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        let mut families = self.lock();
        let at = match families.iter().position(|f| f.name == name) {
            Some(at) => at,
            None => {
                families.push(Family { name: name.to_owned(), help: help.to_owned(), kind, series: Vec::new() });
                families.len() - 1
            }
        };
        let family = &mut families[at];
        debug_assert_eq!(family.kind, kind, "{name} registered as two kinds");
        if let Some((_, cell)) = family.series.iter().find(|(l, _)| *l == labels) {
            return cell.share();
        }
        let cell = cell();
        let shared = cell.share();
        family.series.push((labels, cell));
        shared
    }

    /// A counter (its name ends in `_total`).
    pub fn counter(&self, name: &str, help: &str, labels: Labels<'_>) -> Counter {
        match self.register(name, help, Kind::Counter, labels, || Cell::Counter(Counter::default())) {
            Cell::Counter(counter) => counter,
            _ => Counter::default(),
        }
    }

    /// A gauge.
    pub fn gauge(&self, name: &str, help: &str, labels: Labels<'_>) -> Gauge {
        match self.register(name, help, Kind::Gauge, labels, || Cell::Gauge(Gauge::default())) {
            Cell::Gauge(gauge) => gauge,
            _ => Gauge::default(),
        }
    }

    /// A histogram with these bucket bounds.
    pub fn histogram(&self, name: &str, help: &str, labels: Labels<'_>, bounds: &'static [f64]) -> Histogram {
        match self.register(name, help, Kind::Histogram, labels, || Cell::Histogram(Histogram::new(bounds))) {
            Cell::Histogram(histogram) => histogram,
            _ => Histogram::new(bounds),
        }
    }

    /// A gauge whose value `read` gives when the registry is rendered.
    pub fn gauge_fn(&self, name: &str, help: &str, labels: Labels<'_>, read: impl Fn() -> f64 + Send + Sync + 'static) {
        self.register(name, help, Kind::Gauge, labels, || Cell::Read(Box::new(read)));
    }

    /// A counter whose value `read` gives when the registry is rendered
    /// (a count something else keeps).
    pub fn counter_fn(
        &self,
        name: &str,
        help: &str,
        labels: Labels<'_>,
        read: impl Fn() -> f64 + Send + Sync + 'static,
    ) {
        self.register(name, help, Kind::Counter, labels, || Cell::Read(Box::new(read)));
    }

    /// Every series, in the Prometheus text format.
    pub fn render(&self) -> String {
        let families = self.lock();
        let mut out = String::with_capacity(families.len() * 256);
        for family in families.iter() {
            let _ = writeln!(out, "# HELP {} {}", family.name, escape_help(&family.help));
            let _ = writeln!(out, "# TYPE {} {}", family.name, family.kind.as_str());
            for (labels, cell) in &family.series {
                match cell {
                    Cell::Counter(counter) => sample(&mut out, &family.name, "", labels, None, counter.get() as f64),
                    Cell::Gauge(gauge) => sample(&mut out, &family.name, "", labels, None, gauge.get()),
                    Cell::Read(read) => sample(&mut out, &family.name, "", labels, None, read()),
                    Cell::Histogram(histogram) => {
                        let cells = &histogram.0;
                        let mut cumulative = 0u64;
                        for (i, count) in cells.counts.iter().enumerate() {
                            cumulative += count.load(Ordering::Relaxed);
                            let le = cells.bounds.get(i).map_or_else(|| "+Inf".to_owned(), |b| number(*b));
                            sample(&mut out, &family.name, "_bucket", labels, Some(&le), cumulative as f64);
                        }
                        sample(&mut out, &family.name, "_sum", labels, None, histogram.sum());
                        sample(&mut out, &family.name, "_count", labels, None, cumulative as f64);
                    }
                }
            }
        }
        out
    }

    /// The value of one series (a histogram's: its count), as rendered;
    /// `None` if there is no such series.
    pub fn value(&self, name: &str, labels: Labels<'_>) -> Option<f64> {
        let families = self.lock();
        let family = families.iter().find(|f| f.name == name)?;
        let (_, cell) = family.series.iter().find(|(l, _)| {
            l.len() == labels.len() && l.iter().zip(labels).all(|((k, v), (k2, v2))| k == k2 && v == v2)
        })?;
        Some(cell.read())
    }
}

impl Registry {
    /// The sum of every series of `name` (a histogram's: of their counts).
    pub fn sum(&self, name: &str) -> f64 {
        let families = self.lock();
        let Some(family) = families.iter().find(|f| f.name == name) else { return 0.0 };
        family.series.iter().map(|(_, cell)| cell.read()).sum()
    }
}

impl Cell {
    fn read(&self) -> f64 {
        match self {
            Cell::Counter(counter) => counter.get() as f64,
            Cell::Gauge(gauge) => gauge.get(),
            Cell::Histogram(histogram) => histogram.count() as f64,
            Cell::Read(read) => read(),
        }
    }

    /// Another handle on the same cell (a read-at-render cell is only
    /// ever held by the registry: its second handle reads zero).
    fn share(&self) -> Cell {
        match self {
            Cell::Counter(c) => Cell::Counter(c.clone()),
            Cell::Gauge(g) => Cell::Gauge(g.clone()),
            Cell::Histogram(h) => Cell::Histogram(h.clone()),
            Cell::Read(_) => Cell::Read(Box::new(|| 0.0)),
        }
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn sample(out: &mut String, name: &str, suffix: &str, labels: &[(String, String)], le: Option<&str>, value: f64) {
    out.push_str(name);
    out.push_str(suffix);
    if !labels.is_empty() || le.is_some() {
        out.push('{');
        let mut first = true;
        let le = le.map(|le| ("le", le));
        for (key, value) in labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).chain(le) {
            if !first {
                out.push(',');
            }
            first = false;
            let _ = write!(out, "{key}=\"{}\"", escape_label(value));
        }
        out.push('}');
    }
    out.push(' ');
    out.push_str(&number(value));
    out.push('\n');
}

/// A sample value as the text format spells it.
fn number(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf".into() } else { "-Inf".into() }
    } else {
        format!("{value}")
    }
}

fn escape_label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_renders_cumulative_buckets_its_sum_and_its_count() {
        let registry = Registry::default();
        let latency = registry.histogram("ack_seconds", "Ack latency.", &[("path", "stream")], &[0.25, 1.0]);
        for value in [0.125, 0.25, 0.5, 4.0] {
            latency.observe(value);
        }
        let text = registry.render();
        let expected = "# HELP ack_seconds Ack latency.\n# TYPE ack_seconds histogram\n\
            ack_seconds_bucket{path=\"stream\",le=\"0.25\"} 2\n\
            ack_seconds_bucket{path=\"stream\",le=\"1\"} 3\n\
            ack_seconds_bucket{path=\"stream\",le=\"+Inf\"} 4\n\
            ack_seconds_sum{path=\"stream\"} 4.875\n\
            ack_seconds_count{path=\"stream\"} 4\n";
        assert_eq!(text, expected);
    }

    #[test]
    fn the_same_series_registered_twice_is_one_series_and_labels_are_escaped() {
        let registry = Registry::default();
        let a = registry.counter("x_total", "X.", &[("reason", "a\"b")]);
        let b = registry.counter("x_total", "X.", &[("reason", "a\"b")]);
        a.inc();
        b.add(2);
        registry.gauge_fn("y_bytes", "Y.", &[], || 7.5);
        assert_eq!(registry.value("x_total", &[("reason", "a\"b")]), Some(3.0));
        assert_eq!(
            registry.render(),
            "# HELP x_total X.\n# TYPE x_total counter\nx_total{reason=\"a\\\"b\"} 3\n\
             # HELP y_bytes Y.\n# TYPE y_bytes gauge\ny_bytes 7.5\n"
        );
    }
}
