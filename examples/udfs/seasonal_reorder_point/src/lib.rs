//! `seasonal_reorder_point(par, min, on_hand, sales_7d, lead_time_days)`:
//! a restock policy for the busy season, when demand runs ahead of last
//! week's sales. The reorder point covers the lead time's expected demand
//! plus half again as safety stock, and never less than the planogram's
//! min; a fridge whose shelf holds less is restocked to par.
//!
//! Load it with `[sql] udfs` and name it in `[views] reorder_point_udf`.
//! It is a function of its inputs alone (no clock, no randomness), so a
//! replay of the log gives the same restock orders.

use arroyo_udf_plugin::udf;

/// Safety stock on top of the expected demand, in percent of it.
const SAFETY_PERCENT: i64 = 50;

#[udf]
fn seasonal_reorder_point(par: i64, min: i64, on_hand: i64, sales_7d: i64, lead_time_days: i64) -> i64 {
    let _ = (par, on_hand);
    // ceil(sales_7d / 7 × lead_time_days × (100 + SAFETY_PERCENT) / 100), in integers.
    let numerator = sales_7d * lead_time_days * (100 + SAFETY_PERCENT);
    let demand = -(-numerator).div_euclid(7 * 100);
    min.max(demand)
}
