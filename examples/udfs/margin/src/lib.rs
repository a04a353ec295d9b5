//! `margin(price_cents, cost_cents)`: the share of a sale's price that is
//! margin, null where the price is not positive.

use arroyo_udf_plugin::udf;

#[udf]
fn margin(price_cents: i64, cost_cents: i64) -> Option<f64> {
    (price_cents > 0).then(|| (price_cents - cost_cents) as f64 / price_cents as f64)
}
