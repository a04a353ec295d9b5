//! The latency-throughput curve: `coldstream bench --curve FILE.svg` runs
//! the pipeline flat out to find its maximum, then at fixed fractions of
//! that maximum, and draws commit-to-webhook and commit-to-views latency
//! (p50 and p99) against the throughput each run achieved. The reports go
//! to `FILE.json` beside the image.

use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;

use super::harness::{BenchReport, BenchSpec, Latency};

/// Fractions of the flat-out rate the curve is measured at, besides it.
pub const FRACTIONS: [f64; 4] = [0.1, 0.25, 0.5, 0.75];

/// Every run of the curve, slowest rate first, the flat-out one last.
pub async fn run(spec: &BenchSpec, fractions: &[f64]) -> anyhow::Result<Vec<BenchReport>> {
    let flat_out = super::harness::run(&BenchSpec { rate: None, ..spec.clone() }).await.context("the flat-out run")?;
    eprintln!("flat out: {:.0} events/s end to end", flat_out.events_per_second);
    let mut points = Vec::with_capacity(fractions.len() + 1);
    for fraction in fractions {
        let rate = (flat_out.events_per_second * fraction).round().max(1.0);
        let report = super::harness::run(&BenchSpec { rate: Some(rate), ..spec.clone() })
            .await
            .with_context(|| format!("the run at {rate} events/s"))?;
        eprintln!("at {rate} events/s: {:.0} events/s end to end", report.events_per_second);
        points.push(report);
    }
    points.push(flat_out);
    Ok(points)
}

/// One latency of a report, by what it measured (`all`, `in the views`).
fn latency<'r>(report: &'r BenchReport, of: &str) -> Option<&'r Latency> {
    report.latency.iter().find(|l| l.of == of && l.count > 0)
}

/// The curve's series: name, colour, and (events/s, ms) points.
type Series = (&'static str, RGBColor, Vec<(f64, f64)>);

fn series(points: &[BenchReport]) -> Vec<Series> {
    let pick = |of: &str, p99: bool| -> Vec<(f64, f64)> {
        points
            .iter()
            .filter_map(|r| {
                let l = latency(r, of)?;
                Some((r.events_per_second, if p99 { l.p99_ms } else { l.p50_ms }.max(1) as f64))
            })
            .collect()
    };
    vec![
        ("commit → webhook, p99", RGBColor(200, 30, 30), pick("all", true)),
        ("commit → webhook, p50", RGBColor(240, 130, 40), pick("all", false)),
        ("commit → every view, p99", RGBColor(30, 60, 200), pick("in the views", true)),
        ("commit → every view, p50", RGBColor(60, 160, 220), pick("in the views", false)),
    ]
}

/// Draws the curve to an SVG file.
pub fn draw(points: &[BenchReport], path: &Path) -> anyhow::Result<()> {
    let series = series(points);
    let x_max = points.iter().map(|r| r.events_per_second).fold(1.0, f64::max) * 1.1;
    let y_max = series.iter().flat_map(|(_, _, s)| s.iter().map(|p| p.1)).fold(10.0, f64::max) * 2.0;
    let machine = points.first().map_or_else(String::new, |r| r.machine.clone());
    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    let failed = |e: &dyn std::fmt::Display| anyhow::anyhow!("drawing {}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| failed(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("coldstream: latency against throughput ({machine})"), ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..x_max, (1f64..y_max).log_scale())
        .map_err(|e| failed(&e))?;
    chart
        .configure_mesh()
        .x_desc("events/s accepted end to end")
        .y_desc("latency, ms (log scale)")
        .x_label_formatter(&|x| format!("{:.0}k", x / 1000.0))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()
        .map_err(|e| failed(&e))?;
    for (name, colour, points) in series {
        let style = ShapeStyle::from(&colour).stroke_width(2);
        chart
            .draw_series(LineSeries::new(points.clone(), style))
            .map_err(|e| failed(&e))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        chart.draw_series(points.into_iter().map(|p| Circle::new(p, 4, colour.filled()))).map_err(|e| failed(&e))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(|e| failed(&e))?;
    root.present().map_err(|e| failed(&e))?;
    Ok(())
}

/// The curve as a table: one row per run.
pub fn table(points: &[BenchReport]) -> String {
    let mut out = format!(
        "{:>10} {:>12} {:>20} {:>20} {:>20} {:>30} {:>8}\n",
        "rate",
        "events/s",
        "restock p50/p99 ms",
        "webhooks p50/p99 ms",
        "views p50/p99 ms",
        "p99 ms: compute/outbox/deliver",
        "CPU s/M"
    );
    for r in points {
        let pair = |of| latency(r, of).map_or_else(|| "-".to_owned(), |l| format!("{} / {}", l.p50_ms, l.p99_ms));
        let stages: Vec<String> =
            r.stages.iter().map(|l| if l.count > 0 { l.p99_ms.to_string() } else { "-".to_owned() }).collect();
        let stages = if stages.is_empty() { "-".to_owned() } else { stages.join(" / ") };
        let rate = r.settings["rate"].as_str().unwrap_or("?").to_owned();
        out.push_str(&format!(
            "{rate:>10} {:>12.0} {:>20} {:>20} {:>20} {:>30} {:>8.1}\n",
            r.events_per_second,
            pair("restock"),
            pair("all"),
            pair("in the views"),
            stages,
            r.cpu_seconds_per_million_events
        ));
    }
    out
}

/// Runs the curve and writes `path` (SVG) and the reports beside it as JSON.
pub async fn run_and_draw(spec: &BenchSpec, path: &Path) -> anyhow::Result<Vec<BenchReport>> {
    let points = run(spec, &FRACTIONS).await?;
    draw(&points, path)?;
    let json = path.with_extension("json");
    let text = serde_json::to_string_pretty(&points).context("encoding the curve")?;
    std::fs::write(&json, text).with_context(|| format!("writing {}", json.display()))?;
    Ok(points)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(rate: &str, events_per_second: f64, webhook_p99: u64, views_p99: u64) -> BenchReport {
        let latency = |of: &str, p99_ms| Latency {
            of: of.to_owned(),
            count: 100,
            p50_ms: p99_ms / 4,
            p99_ms,
            p999_ms: p99_ms,
            max_ms: p99_ms,
        };
        BenchReport {
            machine: "2 cores, test".into(),
            settings: serde_json::json!({ "rate": rate }),
            events: 1_000,
            events_per_second,
            seconds: 1.0,
            views_seconds: 1.0,
            archive_seconds: 1.0,
            fleet_seconds: 1.0,
            latency: vec![
                latency("restock", webhook_p99),
                latency("all", webhook_p99),
                latency("in the views", views_p99),
            ],
            stages: vec![
                latency("commit → views computed", views_p99 / 2),
                latency("views → outbox", views_p99 / 2),
                latency("outbox → receiver", webhook_p99 - views_p99),
            ],
            views_by_second: Vec::new(),
            superseded_updates: 0,
            repeated_deliveries: 0,
            cpu_seconds_per_million_events: 10.0,
            peak_rss_mib: 100.0,
        }
    }

    #[test]
    fn the_curve_is_drawn_with_every_series_and_tabled() {
        let points =
            [report("1000", 990.0, 40, 8), report("5000", 4_900.0, 400, 60), report("max", 9_000.0, 9_000, 900)];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("curve.svg");
        draw(&points, &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..100.min(svg.len())]);
        for label in ["commit → webhook, p99", "commit → every view, p50", "events/s accepted end to end"] {
            assert!(svg.contains(label), "{label} is missing");
        }
        // One marker per run and series.
        assert_eq!(svg.matches("<circle").count(), 3 * 4);
        let table = table(&points);
        assert_eq!(table.lines().count(), 4);
        assert!(table.lines().last().unwrap().contains("2250 / 9000"), "{table}");
        assert!(table.lines().last().unwrap().contains("450 / 450 / 8100"), "{table}");
    }
}
