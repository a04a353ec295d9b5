//! The comparison's workload: a simulated fleet's events, hour by hour of
//! event time, with the back office's set-up in the first hour. Warm
//! readings are replaced by 4 °C ones, so that no cold-chain excursion (and
//! no write-off, which dbsp's circuit and the SQL do not implement)
//! happens. [`late_and_warm`] keeps them, and delivers late.

use coldstream_pipelines::event::{HOUR_US, Temperature};
use coldstream_pipelines::fleet::{Fleet, FleetSpec};
use coldstream_pipelines::{Event, Payload};

/// 2026-01-01 00:00 UTC, in µs.
pub const START_US: i64 = 1_767_225_600_000_000;

/// The events of each hour of event time.
pub fn hours(fridges: usize, days: i64, seed: u64) -> Vec<Vec<Event>> {
    fleet_hours(fridges, days, seed).into_iter().map(|hour| hour.into_iter().map(cool).collect()).collect()
}

/// The fleet's events with their warm readings, each hour's in shuffled
/// order and one in 20 held back to the next hour: every view sees late
/// counts, late readings (excursions that split and vanish) and late
/// payment results.
pub fn late_and_warm(fridges: usize, days: i64, seed: u64) -> Vec<Vec<Event>> {
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let mut hours = fleet_hours(fridges, days, seed);
    let mut held = Vec::new();
    for hour in &mut hours {
        let mut arriving = std::mem::take(&mut held);
        for event in hour.drain(..) {
            if rng.random_ratio(1, 20) { held.push(event) } else { arriving.push(event) }
        }
        arriving.shuffle(&mut rng);
        *hour = arriving;
    }
    if let Some(last) = hours.last_mut() {
        last.append(&mut held);
    }
    hours
}

fn fleet_hours(fridges: usize, days: i64, seed: u64) -> Vec<Vec<Event>> {
    let spec = FleetSpec {
        seed,
        fridges,
        events: fridges as u64 * 200 * 24 * days as u64,
        start_us: START_US,
        bad_rate: 0.0,
        skus: None,
    };
    let mut fleet = Fleet::new(&spec);
    let mut hours = Vec::with_capacity(days as usize * 24);
    for hour in 0..days * 24 {
        let mut batch = if hour == 0 { std::mem::take(&mut fleet.back_office) } else { Vec::new() };
        for fridge in &mut fleet.fridges {
            batch.extend(fridge.events_until(START_US + (hour + 1) * HOUR_US));
        }
        hours.push(batch);
    }
    hours
}

fn cool(mut event: Event) -> Event {
    if let Payload::Telemetry { temperature_c, .. } = &mut event.payload
        && temperature_c.0 > 5.0
    {
        *temperature_c = Temperature(4.0);
    }
    event
}
