//! Cold chain: `excursions(fridge_id, start) → end, max_temperature_c`.
//!
//! A fridge's telemetry, ordered by event time (then seq), splits into runs
//! of consecutive readings above 5.0 °C; any reading at or below 5.0 °C ends
//! a run. A run is an excursion once its last reading is at least 30
//! minutes after its first. Late telemetry simply re-splits the runs, so an
//! excursion can grow, shrink, split or vanish as a backlog arrives.

use std::collections::BTreeMap;

use differential_dataflow::collection::VecCollection;

use crate::event::MINUTE_US;
use crate::{Event, Payload, Temperature, Time};

/// Readings above this temperature (°C) are warm.
pub const WARM_ABOVE_C: f32 = 5.0;
/// A warm run counts as an excursion once it lasts this long (µs).
pub const EXCURSION_AFTER_US: i64 = 30 * MINUTE_US;

/// `(fridge_id, first warm reading's event time)`.
pub type ExcursionKey = (String, i64);
/// `(last warm reading's event time, the run's highest temperature)`.
pub type Excursion = (i64, Temperature);

/// A telemetry reading: `(event_time, seq, temperature)`.
type Reading = (i64, u64, Temperature);

fn reading(event: &Event) -> Option<(String, Reading)> {
    match &event.payload {
        Payload::Telemetry { temperature_c, .. } => {
            Some((event.source_id.clone(), (event.event_time, event.seq, *temperature_c)))
        }
        _ => None,
    }
}

/// Splits readings in (event time, seq) order into excursions.
fn runs<'a>(readings: impl Iterator<Item = &'a Reading>) -> Vec<(i64, Excursion)> {
    let mut found = Vec::new();
    let mut current: Option<(i64, i64, Temperature)> = None;
    let close = |run: Option<(i64, i64, Temperature)>, found: &mut Vec<(i64, Excursion)>| {
        if let Some((start, end, max)) = run
            && end - start >= EXCURSION_AFTER_US
        {
            found.push((start, (end, max)));
        }
    };
    for &(time, _, temperature) in readings {
        if temperature.0 > WARM_ABOVE_C {
            current = Some(match current {
                Some((start, _, max)) => (start, time, max.max(temperature)),
                None => (time, time, temperature),
            });
        } else {
            close(current.take(), &mut found);
        }
    }
    close(current, &mut found);
    found
}

/// Every excursion, maintained incrementally.
pub fn excursions<'s>(events: VecCollection<'s, Time, Event>) -> VecCollection<'s, Time, (ExcursionKey, Excursion)> {
    events
        .flat_map(|event| reading(&event))
        .reduce_named("Excursions", |_fridge, input, output| {
            // Values arrive sorted by (event time, seq).
            for (start, excursion) in runs(input.iter().map(|(reading, _)| *reading)) {
                output.push(((start, excursion), 1));
            }
        })
        .map(|(fridge, (start, excursion))| ((fridge, start), excursion))
}

/// The batch reference of [`excursions`].
pub fn excursions_reference(events: &[Event]) -> BTreeMap<ExcursionKey, Excursion> {
    let mut by_fridge: BTreeMap<String, Vec<Reading>> = BTreeMap::new();
    for (fridge, r) in events.iter().filter_map(reading) {
        by_fridge.entry(fridge).or_default().push(r);
    }
    let mut all = BTreeMap::new();
    for (fridge, mut readings) in by_fridge {
        readings.sort();
        readings.dedup();
        for (start, excursion) in runs(readings.iter()) {
            all.insert((fridge.clone(), start), excursion);
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::harness::{final_state, run_view};

    fn telemetry(seq: u64, minute: i64, celsius: f32) -> Event {
        Event {
            source_id: "FR-1".into(),
            seq,
            event_time: minute * MINUTE_US,
            payload: Payload::Telemetry { temperature_c: Temperature(celsius), door_open: false },
        }
    }

    fn by_dataflow(workers: usize, arrivals: Vec<(Time, Vec<Event>)>) -> BTreeMap<ExcursionKey, Excursion> {
        final_state(&run_view(workers, arrivals, excursions)).into_keys().collect()
    }

    #[test]
    fn twenty_nine_minutes_is_not_an_excursion_and_thirty_is() {
        let short: Vec<Event> = (0..=29).map(|m| telemetry(m as u64 + 1, m, 7.5)).collect();
        assert!(excursions_reference(&short).is_empty());
        let long: Vec<Event> = (0..=30).map(|m| telemetry(m as u64 + 1, m, 6.0 + m as f32 / 10.0)).collect();
        let expected = BTreeMap::from([(("FR-1".to_owned(), 0), (30 * MINUTE_US, Temperature(9.0)))]);
        assert_eq!(excursions_reference(&long), expected);
        assert_eq!(by_dataflow(1, vec![(1, long)]), expected);
    }

    #[test]
    fn a_late_cool_reading_splits_an_excursion() {
        let warm: Vec<Event> = (0..=40).map(|m| telemetry(m as u64 + 1, m, 8.0)).collect();
        let cool = telemetry(100, 20, 4.0);
        let arrivals = vec![(1, warm.clone()), (2, vec![cool.clone()])];
        let mut all = warm;
        all.push(cool);
        // 0..=19 and 21..=40 are both shorter than 30 minutes.
        assert!(excursions_reference(&all).is_empty());
        assert!(by_dataflow(2, arrivals).is_empty());
    }

    fn readings() -> impl Strategy<Value = Vec<Event>> {
        prop::collection::vec((0usize..2, 0i64..120, prop_oneof![Just(4.0f32), Just(5.0), Just(6.5), Just(9.0)]), 0..80)
            .prop_map(|raw| {
                let mut seqs = [0u64; 2];
                raw.into_iter()
                    .map(|(fridge, minute, celsius)| {
                        seqs[fridge] += 1;
                        let mut event = telemetry(seqs[fridge], minute * 2, celsius);
                        event.source_id = format!("FR-{fridge}");
                        event
                    })
                    .collect()
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn equals_the_reference((events, arrivals) in crate::fleet_gen::shuffled(readings()), workers in 1usize..=2) {
            prop_assert_eq!(by_dataflow(workers, arrivals), excursions_reference(&events));
        }
    }
}
